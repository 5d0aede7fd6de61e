"""Spectral-Proximal Alignment (SPA) and the combined OmniFM objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["OmniFMLoss", "SpectralProximalAlignmentLoss", "token_spread"]


def token_spread(tokens: torch.Tensor) -> torch.Tensor:
    """``1 - mean pairwise cosine`` of ``tokens (N, d)`` (or ``(N, m, d)``, token-averaged): 0 when every
    image gets the same token. Differentiable; 0 for fewer than two tokens."""
    s = tokens.mean(1) if tokens.dim() == 3 else tokens
    n = s.shape[0]
    if n < 2:
        return s.sum() * 0.0
    unit = F.normalize(s, dim=-1)
    total = unit.sum(0)
    return 1 - (total.dot(total) - n) / (n * (n - 1))


class SpectralProximalAlignmentLoss(_Loss):
    """``||s - stopgrad(mean_k S_g)||^2``: pull a site's spectral token towards the retrieved global prior.

    A proximal term in the spectral-embedding domain (FedProx's is in weight space). With unit-norm
    tokens this is about ``2 - 2 cos(s, mean S_g)``. Multi-token ``s (B, m, d)`` is averaged over tokens.
    Zero when nothing was retrieved (an empty bank).

    The proximal term alone is cheapest to satisfy with one token for every image (its gradient reaches the
    tokenizer only): ``spread_weight > 0`` adds ``spread_weight * relu(spread_floor - token_spread(s))`` over
    the batch, which costs nothing while the batch's tokens are at least ``spread_floor`` apart and pushes
    them apart when they collapse (the variance term of VICReg, on the quantity the diagnostics report).
    Per image, the spread's gradient and the pull towards the prior are of one size (both scale with
    ``1 / B``), so a weight of 1 only ties with the pull: on the real reference slices (150 Adam steps, lr 1e-2, floor 0.05) the spread ends at 5e-6
    with weight 0 or 1, at 0.056 with 10 and 0.076 with 100; hence the default of 10.

    Shapes: ``tokens (B, d)`` or ``(B, m, d)``, ``retrieved (B, k, d)`` -> scalar (``reduction="mean"``; the
    spread term is per batch, added to the mean or the sum).
    """

    def __init__(
        self, spread_weight: float = 10.0, spread_floor: float = 0.05, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction=reduction)
        if spread_weight < 0 or not 0 <= spread_floor <= 2:
            raise ValueError(
                f"need spread_weight >= 0 and 0 <= spread_floor <= 2, got {spread_weight}, {spread_floor}."
            )
        self.spread_weight, self.spread_floor = spread_weight, spread_floor

    def forward(self, tokens: torch.Tensor, retrieved: torch.Tensor) -> torch.Tensor:
        s = tokens.mean(1) if tokens.dim() == 3 else tokens
        anti_collapse = (
            self.spread_weight * F.relu(self.spread_floor - token_spread(s))
            if self.spread_weight > 0
            else 0.0
        )
        if retrieved.shape[1] == 0:
            return s.sum() * 0.0 + anti_collapse  # keeps the graph
        per_sample = (s - retrieved.mean(1).detach()).pow(2).sum(-1)
        if self.reduction == "mean":
            return per_sample.mean() + anti_collapse
        return per_sample.sum() + anti_collapse if self.reduction == "sum" else per_sample


class OmniFMLoss(_Loss):
    """``L_task(pred, target) + spa_weight * SPA(s, S_g)`` for MONAI's ``SupervisedTrainer``.

    The network (an :class:`~omnifm_monai.networks.OmniFM`) keeps ``spectral_alignment`` after each
    forward; this loss reads it, so the trainer, inferer and metrics stay MONAI's own. A network
    without SPA (or any other ``nn.Module``) gives the task loss alone.

    Args:
        task_loss: e.g. ``monai.losses.DiceCELoss`` or ``torch.nn.CrossEntropyLoss``.
        network: the network whose forward precedes each call.
        spa_weight: ``lambda``.
        spread_weight / spread_floor: SPA's anti-collapse term (:class:`SpectralProximalAlignmentLoss`).
    """

    def __init__(
        self,
        task_loss: nn.Module,
        network: nn.Module,
        spa_weight: float = 0.1,
        spread_weight: float = 10.0,
        spread_floor: float = 0.05,
    ) -> None:
        super().__init__()
        if spa_weight < 0:
            raise ValueError(f"spa_weight must be >= 0, got {spa_weight}.")
        self.task_loss, self.spa_weight = task_loss, spa_weight
        self.spa = SpectralProximalAlignmentLoss(spread_weight, spread_floor)
        self._network = [network]  # a list keeps the network out of this module's parameters

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.task_loss(input, target)
        alignment = getattr(self._network[0], "spectral_alignment", None)
        if self.spa_weight > 0 and alignment is not None:
            loss = loss + self.spa_weight * self.spa(*alignment)
        return loss
