"""Spectral-Proximal Alignment (SPA) and the combined OmniFM objective."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["OmniFMLoss", "SpectralProximalAlignmentLoss"]


class SpectralProximalAlignmentLoss(_Loss):
    """``||s - stopgrad(mean_k S_g)||^2``: pull a site's spectral token towards the retrieved global prior.

    A proximal term in the spectral-embedding domain (FedProx's is in weight space). With unit-norm
    tokens this is about ``2 - 2 cos(s, mean S_g)``. Multi-token ``s (B, m, d)`` is averaged over tokens.
    Zero when nothing was retrieved (an empty bank).

    Shapes: ``tokens (B, d)`` or ``(B, m, d)``, ``retrieved (B, k, d)`` -> scalar (``reduction="mean"``).
    """

    def forward(self, tokens: torch.Tensor, retrieved: torch.Tensor) -> torch.Tensor:
        s = tokens.mean(1) if tokens.dim() == 3 else tokens
        if retrieved.shape[1] == 0:
            return s.sum() * 0.0  # keeps the graph, contributes nothing
        per_sample = (s - retrieved.mean(1).detach()).pow(2).sum(-1)
        if self.reduction == "mean":
            return per_sample.mean()
        return per_sample.sum() if self.reduction == "sum" else per_sample


class OmniFMLoss(_Loss):
    """``L_task(pred, target) + spa_weight * SPA(s, S_g)`` for MONAI's ``SupervisedTrainer``.

    The network (an :class:`~omnifm_monai.networks.OmniFM`) keeps ``spectral_alignment`` after each
    forward; this loss reads it, so the trainer, inferer and metrics stay MONAI's own. A network
    without SPA (or any other ``nn.Module``) gives the task loss alone.

    Args:
        task_loss: e.g. ``monai.losses.DiceCELoss`` or ``torch.nn.CrossEntropyLoss``.
        network: the network whose forward precedes each call.
        spa_weight: ``lambda``.
    """

    def __init__(self, task_loss: nn.Module, network: nn.Module, spa_weight: float = 0.1) -> None:
        super().__init__()
        if spa_weight < 0:
            raise ValueError(f"spa_weight must be >= 0, got {spa_weight}.")
        self.task_loss, self.spa, self.spa_weight = task_loss, SpectralProximalAlignmentLoss(), spa_weight
        self._network = [network]  # a list keeps the network out of this module's parameters

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.task_loss(input, target)
        alignment = getattr(self._network[0], "spectral_alignment", None)
        if self.spa_weight > 0 and alignment is not None:
            loss = loss + self.spa_weight * self.spa(*alignment)
        return loss
