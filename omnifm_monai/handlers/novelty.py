"""Out-of-distribution warning from OmniFM's own parts: the distance of an input's spectral summary to the
bank's prototypes (:meth:`~omnifm_monai.networks.nets.OmniFM.novelty`).

:class:`NoveltyCalibration` sets the network's ``novelty_threshold`` to a quantile of the validation images'
novelty before each validation (saved in the checkpoint; in a federation the sites' thresholds are averaged
with the weights). :class:`NoveltyCheck` scores every inference input, writes ``<input>_novelty.json`` beside
the prediction and logs a warning above the threshold.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from monai.config import PathLike
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["NoveltyCalibration", "NoveltyCheck", "novelty_scores", "slices"]

logger = logging.getLogger(__name__)


def slices(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` as it is; a batch of volumes ``(B, C, H, W, D)`` as its ``B * D`` axial slices."""
    if images.dim() == 5:
        return images.movedim(-1, 1).reshape(-1, *images.shape[1:4])
    return images


@torch.no_grad()
def novelty_scores(
    network: torch.nn.Module,
    data: Iterable,
    image_key: str = "image",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The novelty of every image (every slice of a volume) in ``data`` (batches of dicts), one tensor."""
    was_training = network.training
    network.eval()
    scores = []
    for batch in data:
        images = batch[image_key].to(device) if device is not None else batch[image_key]
        scores.append(network.novelty(slices(torch.as_tensor(images))).cpu())
    network.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)


class NoveltyCalibration:
    """Set ``network.novelty_threshold`` to the ``quantile`` of the novelty of the images in ``data_loader``
    (the validation split), so that this fraction of in-distribution images is not flagged.

    Attach it to the validator (its ``handlers``, before ``CheckpointSaver``): it runs when each validation
    starts, so the checkpoint the validator saves carries the threshold of the weights it holds."""

    def __init__(
        self,
        network: torch.nn.Module,
        data_loader: Iterable,
        quantile: float = 0.95,
        image_key: str = "image",
    ) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile}.")
        self.network, self.data_loader, self.quantile, self.image_key = (
            network,
            data_loader,
            quantile,
            image_key,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(self.network, "bank", None) is None or not len(self.network.bank):
            return  # nothing to measure against
        scores = novelty_scores(
            self.network, self.data_loader, self.image_key, getattr(engine.state, "device", None)
        )
        scores = scores[torch.isfinite(scores)]
        if scores.numel():
            self.network.novelty_threshold.fill_(float(torch.quantile(scores, self.quantile)))


class NoveltyCheck:
    """For every inference input: its novelty (the mean over a volume's slices) beside the prediction, as
    ``<output_dir>/<input stem>_novelty.json`` (``novelty``, ``threshold``, ``out_of_distribution``,
    ``per_slice``), and a warning naming the file when it exceeds the calibrated threshold."""

    def __init__(self, network: torch.nn.Module, output_dir: PathLike, image_key: str = "image") -> None:
        self.network, self.output_dir, self.image_key = network, Path(output_dir), image_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(self.network, "bank", None) is None:
            return
        batch = engine.state.batch  # a list of items once the workflow has decollated it
        images = (
            [item[self.image_key] for item in batch] if isinstance(batch, list) else batch[self.image_key]
        )
        threshold = float(self.network.novelty_threshold)
        device = getattr(engine.state, "device", None)
        for image in images:
            per_slice = self.network.novelty(slices(image[None].to(device))).cpu().tolist()
            score = sum(per_slice) / len(per_slice)
            source = str(getattr(image, "meta", {}).get("filename_or_obj", "input"))
            flagged = threshold > 0 and math.isfinite(score) and score > threshold
            record = {
                "input": source,
                "novelty": score if math.isfinite(score) else None,
                "threshold": threshold if threshold > 0 else None,
                "out_of_distribution": flagged,
                "per_slice": [s if math.isfinite(s) else None for s in per_slice],
            }
            self.output_dir.mkdir(parents=True, exist_ok=True)
            stem = Path(source).name.split(".")[0] or "input"
            (self.output_dir / f"{stem}_novelty.json").write_text(json.dumps(record, indent=1) + "\n")
            if flagged:
                logger.warning(
                    "%s: out of distribution for this model (novelty %.3f > calibrated %.3f): "
                    "its spectral summary is far from every site's; check the modality and the prediction.",
                    source,
                    score,
                    threshold,
                )
