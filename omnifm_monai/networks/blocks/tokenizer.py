"""Spectral tokenizer: low-frequency log-amplitude of an image -> a few unit-norm spectral tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from omnifm_monai.spectral import check_beta, low_pass_log_amplitude

__all__ = ["SpectralTokenizer"]


class SpectralTokenizer(nn.Module):
    """``s = Tok(P_LP(log(1 + |FFT(x)|)))`` (OmniFM step 1).

    The centred low-pass window of half-width ``floor(beta * min(S))`` is resampled to a fixed
    ``grid_size`` per axis (so the learnable filter does not depend on the image size), optionally
    standardised per sample and channel, then: learnable element-wise filter -> 1x1 conv channel mix -> GELU
    -> patchify + linear (a strided conv) -> mean-pool to ``num_tokens`` -> (+ projected intensity moments)
    -> LayerNorm -> l2-normalise.

    What the token can tell apart: per-sample standardisation (``standardize=True``) removes the DC bin and
    the spectrum's overall level, which carry much of what distinguishes contrasts and scanners; without it
    the token keeps them. The amplitude spectrum is blind to contrast polarity (an inverted image has the same
    amplitude, up to the DC bin): ``moments=True`` adds the image's intensity mean, standard deviation and
    skewness per channel (skewness changes sign under inversion, e.g. T1 against T2), projected to the token.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        embed_dim: spectral token size ``d_s``.
        beta: low-pass ratio of the window.
        grid_size: bins per axis the window is resampled to; must be divisible by ``patch_size``.
        patch_size: patch edge in bins.
        hidden_channels: channels after the 1x1 mix.
        num_tokens: tokens per image ``m``.
        standardize: standardise the window per sample and channel (drops its level and DC dominance).
        moments: add the projected intensity moments (mean, std, skewness per channel) to every token.

    Shapes: ``(B, in_channels, *S) -> (B, num_tokens, embed_dim)``, each token of unit l2 norm.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        embed_dim: int = 128,
        beta: float = 0.1,
        grid_size: int = 16,
        patch_size: int = 4,
        hidden_channels: int = 16,
        num_tokens: int = 1,
        standardize: bool = True,
        moments: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if grid_size % patch_size:
            raise ValueError(f"grid_size ({grid_size}) must be divisible by patch_size ({patch_size}).")
        self.spatial_dims, self.beta, self.grid_size = spatial_dims, check_beta(beta), grid_size
        self.standardize = standardize
        self.filter = nn.Parameter(torch.ones(in_channels, *([grid_size] * spatial_dims)))
        self.mix = Conv[Conv.CONV, spatial_dims](in_channels, hidden_channels, kernel_size=1)
        self.act = nn.GELU()
        self.patchify = Conv[Conv.CONV, spatial_dims](
            hidden_channels, embed_dim, kernel_size=patch_size, stride=patch_size
        )
        self.pool = nn.AdaptiveAvgPool1d(num_tokens)
        self.moments = nn.Linear(3 * in_channels, embed_dim) if moments else None
        if (
            self.moments is not None
        ):  # zero at first: the moments join the token as training finds them useful
            nn.init.zeros_(self.moments.weight)
            nn.init.zeros_(self.moments.bias)
        self.norm = nn.LayerNorm(embed_dim)

    def low_pass_log_amplitude(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised low-pass log-amplitude on the fixed grid, ``(B, C, *[grid_size] * spatial_dims)``."""
        window = low_pass_log_amplitude(x.float().as_subclass(torch.Tensor), self.spatial_dims, self.beta)
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        window = F.interpolate(
            window, size=[self.grid_size] * self.spatial_dims, mode=mode, align_corners=True
        )
        if not self.standardize:
            return window
        # the DC bin dominates the raw log-amplitude; standardising keeps the descriptor about shape
        flat = window.flatten(2)
        mean, std = flat.mean(-1, keepdim=True), flat.std(-1, keepdim=True)
        return ((flat - mean) / (std + 1e-6)).view_as(window)

    @staticmethod
    def intensity_moments(x: torch.Tensor) -> torch.Tensor:
        """Mean, standard deviation and skewness of each channel's intensities, ``(B, 3 C)``."""
        flat = x.float().as_subclass(torch.Tensor).flatten(2)
        mean, std = flat.mean(-1), flat.std(-1)
        skew = ((flat - mean[..., None]) ** 3).mean(-1) / (std**3 + 1e-6)
        return torch.cat([mean, std, skew], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.mix(self.low_pass_log_amplitude(x) * self.filter))
        patches = self.patchify(h).flatten(2)  # (B, d, P)
        tokens = self.pool(patches).transpose(1, 2)  # (B, m, d)
        if self.moments is not None:
            tokens = tokens + self.moments(self.intensity_moments(x))[:, None]
        return F.normalize(self.norm(tokens), dim=-1)
