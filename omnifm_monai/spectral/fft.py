"""Centred, orthonormal n-D FFT over the trailing spatial axes, amplitude/phase, low-pass windows.

Convention (used everywhere in the project, never re-implemented):

* the transform runs over the last ``spatial_dims`` axes, so channel-first images ``(C, *S)`` and
  batches ``(B, C, *S)`` are handled alike;
* ``norm="ortho"``: the transform is unitary, so Parseval holds, ``sum|x|^2 == sum|F|^2``;
* the spectrum is centred with ``fftshift``: the DC bin sits at index ``n // 2`` of every axis;
* the log-amplitude is ``log(1 + |F|)`` per channel;
* the low-pass window is the centred square/cube of half-width ``b = max(1, floor(beta * min(S)))``,
  i.e. ``2b + 1`` bins per axis around DC (FedDG's window arithmetic).

Every function accepts a torch tensor or a numpy array and returns the same type.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.utils import convert_to_dst_type, convert_to_tensor

SPECTRAL_NORM = "ortho"

__all__ = [
    "SPECTRAL_NORM",
    "fft_centered",
    "ifft_centered",
    "amplitude_phase",
    "check_beta",
    "merge_amplitude_phase",
    "log_amplitude",
    "low_pass_half_width",
    "low_pass_log_amplitude",
    "low_pass_slices",
]


def _dims(x: NdarrayOrTensor, spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
    if x.ndim < spatial_dims:
        raise ValueError(f"input has {x.ndim} axes, fewer than spatial_dims={spatial_dims}.")
    return tuple(range(-spatial_dims, 0))


def _as_tensor(x: NdarrayOrTensor) -> torch.Tensor:
    # MetaTensor metadata is restored by the callers through convert_to_dst_type.
    return convert_to_tensor(x, track_meta=False)


def fft_centered(x: NdarrayOrTensor, spatial_dims: int) -> NdarrayOrTensor:
    """Complex centred spectrum of ``x`` over its last ``spatial_dims`` axes (``norm="ortho"``)."""
    dims = _dims(x, spatial_dims)
    t = _as_tensor(x)
    f = torch.fft.fftshift(torch.fft.fftn(t, dim=dims, norm=SPECTRAL_NORM), dim=dims)
    return f.numpy() if isinstance(x, np.ndarray) else f


def ifft_centered(f: NdarrayOrTensor, spatial_dims: int, real: bool = True) -> NdarrayOrTensor:
    """Inverse of :func:`fft_centered`; the real part is returned when ``real`` (the default)."""
    dims = _dims(f, spatial_dims)
    t = _as_tensor(f)
    x = torch.fft.ifftn(torch.fft.ifftshift(t, dim=dims), dim=dims, norm=SPECTRAL_NORM)
    x = x.real if real else x
    return x.numpy() if isinstance(f, np.ndarray) else x


def amplitude_phase(x: NdarrayOrTensor, spatial_dims: int) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
    """Centred amplitude ``|F|`` and phase ``angle(F)`` of a real image, same type as ``x``.

    Floating inputs keep their dtype; integer inputs give float32 (never a truncated amplitude).
    """
    f = _as_tensor(fft_centered(_as_tensor(x), spatial_dims))
    amp, pha = f.abs(), f.angle()
    dtype = x.dtype if _as_tensor(x[..., :0]).is_floating_point() else torch.float32
    return convert_to_dst_type(amp, x, dtype=dtype)[0], convert_to_dst_type(pha, x, dtype=dtype)[0]


def merge_amplitude_phase(
    amplitude: NdarrayOrTensor, phase: NdarrayOrTensor, spatial_dims: int
) -> NdarrayOrTensor:
    """Real image whose centred spectrum is ``amplitude * exp(i * phase)``; inverse of :func:`amplitude_phase`."""
    amp, pha = _as_tensor(amplitude), _as_tensor(phase)
    x = ifft_centered(torch.polar(amp, pha), spatial_dims)
    return convert_to_dst_type(x, amplitude, dtype=amplitude.dtype)[0]


def log_amplitude(x: NdarrayOrTensor, spatial_dims: int) -> NdarrayOrTensor:
    """``log(1 + |F|)`` of the centred spectrum, per channel."""
    out = torch.log1p(_as_tensor(fft_centered(_as_tensor(x), spatial_dims)).abs())  # no phase needed
    dtype = x.dtype if _as_tensor(x[..., :0]).is_floating_point() else torch.float32
    return convert_to_dst_type(out, x, dtype=dtype)[0]


def check_beta(beta: float) -> float:
    """``beta`` as a float, after checking the low-pass ratio rule ``0 < beta <= 0.5``."""
    if not 0.0 < beta <= 0.5:
        raise ValueError(f"beta must be in (0, 0.5], got {beta}.")
    return float(beta)


def low_pass_half_width(spatial_shape: tuple[int, ...], beta: float) -> int:
    """Half-width ``b = max(1, floor(beta * min(spatial_shape)))`` of the low-pass window."""
    return max(1, math.floor(check_beta(beta) * min(spatial_shape)))


def low_pass_slices(spatial_shape: tuple[int, ...], beta: float) -> tuple[slice, ...]:
    """Slices selecting the centred low-pass window (``2b + 1`` bins per axis around DC, clipped to the axis)."""
    b = low_pass_half_width(spatial_shape, beta)
    return tuple(slice(max(n // 2 - b, 0), min(n // 2 + b + 1, n)) for n in spatial_shape)


def low_pass_log_amplitude(x: torch.Tensor, spatial_dims: int, beta: float) -> torch.Tensor:
    """``log_amplitude(x)`` restricted to its centred low-pass window (:func:`low_pass_slices`), the same values,
    computed on the window's bins only: they are gathered from the unshifted spectrum (centred bin ``i`` is
    unshifted bin ``(i - n // 2) mod n``), so neither the full spectrum's shift nor its amplitude is computed."""
    dims = _dims(x, spatial_dims)
    f = torch.fft.fftn(x, dim=dims, norm=SPECTRAL_NORM)
    for dim, window in zip(dims, low_pass_slices(tuple(x.shape[d] for d in dims), beta), strict=True):
        n = x.shape[dim]
        f = f.index_select(dim, (torch.arange(window.start, window.stop, device=x.device) - n // 2) % n)
    return torch.log1p(f.abs())
