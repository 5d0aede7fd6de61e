"""Write class / answer predictions of an evaluator run as one JSON file per input image."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["PredictionJSONWriter"]


def _stem(filename: str) -> str:
    name = Path(str(filename).rstrip("/")).name
    for suffix in (".nii.gz", ".nii", ".dcm", ".png", ".jpg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class PredictionJSONWriter:
    """Collect softmax predictions per item and write ``<output_dir>/<input stem>_<postfix>.json``.

    Each file holds the input path and, per item (a 2D image, or each slice of a volume, or each question),
    the predicted name, its probability and the full distribution. Files are written atomically at the
    end of the run, so an interrupted run leaves no partial file.

    Args:
        output_dir: folder for the JSON files (created).
        names: class or answer names, in output order.
        image_key: key of the image in the batch (its metadata names the input file).
        pred_key: key of the logits in the output.
        extra_keys: batch keys copied into each entry when present (e.g. ``slice_index``, ``question_text``).
        output_postfix: file-name postfix.
    """

    def __init__(
        self,
        output_dir: str,
        names: Sequence[str],
        image_key: str = "image",
        pred_key: str = "pred",
        extra_keys: Sequence[str] = ("slice_index", "question_text"),
        output_postfix: str = "prediction",
    ) -> None:
        self.output_dir, self.names = Path(output_dir), list(names)
        self.image_key, self.pred_key, self.extra_keys, self.postfix = (
            image_key,
            pred_key,
            list(extra_keys),
            output_postfix,
        )
        self.entries: dict[str, list[dict]] = defaultdict(list)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.entries.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output, strict=True):
            probs = torch.softmax(torch.as_tensor(out[self.pred_key]).float().flatten(), dim=0)
            if probs.numel() != len(self.names):
                raise ValueError(f"{probs.numel()} outputs but {len(self.names)} names were given.")
            best = int(probs.argmax())
            entry = {key: _plain(item[key]) for key in self.extra_keys if key in item}
            entry.update(
                prediction=self.names[best],
                probability=round(float(probs[best]), 6),
                probabilities={n: round(float(p), 6) for n, p in zip(self.names, probs, strict=True)},
            )
            source = (
                item[self.image_key].meta.get("filename_or_obj", "image")
                if hasattr(item[self.image_key], "meta")
                else "image"
            )
            self.entries[str(source)].append(entry)

    def write(self, engine: Engine | None = None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for source, entries in self.entries.items():
            path = self.output_dir / f"{_stem(source)}_{self.postfix}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"input": source, "predictions": entries}, indent=2))
            os.replace(tmp, path)


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
