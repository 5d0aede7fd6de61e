"""Classification / closed-set VQA accuracy (MONAI cumulative metric) and the class-index helper it uses.

The per-group accuracy handler (e.g. per VQA answer type) is :class:`omnifm_monai.handlers.GroupAccuracy`.
"""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric

__all__ = ["AccuracyMetric", "class_indices"]


def class_indices(x: torch.Tensor) -> torch.Tensor:
    """Class indices from logits / one-hot ``(B, C)`` or from indices ``(B,)`` / ``(B, 1)``."""
    x = torch.as_tensor(x)
    return x.argmax(dim=1) if x.dim() == 2 and x.shape[1] > 1 else x.reshape(-1).long()


class AccuracyMetric(CumulativeIterationMetric):
    """Fraction of items whose predicted class equals the label (MONAI cumulative metric).

    ``y_pred`` as logits / one-hot ``(B, C)``, ``y`` as one-hot ``(B, C)`` or indices ``(B,)``.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (class_indices(y_pred) == class_indices(y)).float().unsqueeze(1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        return data.mean() if data is not None and data.numel() else torch.tensor(float("nan"))
