"""Accuracy per group of items (e.g. VQA answer type: closed / open), as an ignite handler."""

from __future__ import annotations

from collections import defaultdict

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from omnifm_monai.metrics import class_indices

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["GroupAccuracy"]


class GroupAccuracy:
    """Accuracy per value of a batch key (e.g. ``answer_type``: closed / open), added to ``engine.state.metrics``
    as ``{prefix}_{group}`` at the end of each run, before the loggers read them.

    Items without ``group_key`` are left out (e.g. datalists that do not mark it).

    Args:
        group_key: key in each batch item naming its group.
        prefix: metric name prefix.
        pred_key / label_key: keys of the prediction and the label in the output.
        names: group value (as text, e.g. ``"True"``) -> name in the metric; default the value itself.
    """

    def __init__(
        self,
        group_key: str = "answer_type",
        prefix: str = "val_acc",
        pred_key: str = "pred",
        label_key: str = "label",
        names: dict[str, str] | None = None,
    ) -> None:
        self.group_key, self.prefix, self.pred_key, self.label_key = group_key, prefix, pred_key, label_key
        self.names = dict(names or {})
        self.hits: dict[str, list[float]] = defaultdict(list)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.hits.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def collect(self, engine: Engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output, strict=True):
            if self.group_key not in item:
                continue
            group = item[self.group_key]
            group = str(group.item() if isinstance(group, torch.Tensor) else group)
            pred = class_indices(torch.as_tensor(out[self.pred_key]).reshape(1, -1))
            label = class_indices(torch.as_tensor(out[self.label_key]).reshape(1, -1))
            self.hits[self.names.get(group, group)].append(float(pred == label))

    def publish(self, engine: Engine) -> None:
        for group, hits in self.hits.items():
            engine.state.metrics[f"{self.prefix}_{group}"] = sum(hits) / len(hits)
