"""Fourier-domain transforms: the low-frequency descriptor, FedDG amplitude mixing, HarmoFL amplitude
normalisation and super-resolution degradations; and :class:`ConvertBraTSLabels`, a label-value map.

Every FFT goes through :mod:`omnifm_monai.spectral` (centred, ``norm="ortho"``, trailing spatial axes, low-pass
window of half-width ``b = max(1, floor(beta * min(S)))``). Inputs are channel-first ``(C, *spatial)`` with
1 to 3 spatial axes (``spatial_dims = img.ndim - 1``). A numpy array in gives a numpy array out, a tensor
gives a tensor, and a MetaTensor keeps its metadata. Integer inputs are computed and returned as float32;
float inputs keep their dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.data.utils import to_affine_nd
from monai.transforms.transform import RandomizableTransform, Transform
from monai.transforms.utils import scale_affine
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from omnifm_monai.spectral import (
    amplitude_phase,
    check_beta,
    fft_centered,
    ifft_centered,
    low_pass_log_amplitude,
    low_pass_slices,
    merge_amplitude_phase,
)

__all__ = [
    "LowFrequencyLogAmplitude",
    "AmplitudeMix",
    "RandAmplitudeMix",
    "AmplitudeNormalize",
    "SuperResolutionDegrade",
    "ConvertBraTSLabels",
    "amplitude_bank",
]


def _float_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    """``img`` as a plain floating-point tensor; the metadata comes back through :func:`_like`."""
    x = convert_to_tensor(img, track_meta=False)
    if not 2 <= x.ndim <= 4:
        raise ValueError(
            f"expected a channel-first image (C, *spatial) with 1-3 spatial axes, got {tuple(x.shape)}."
        )
    return x if x.is_floating_point() else x.float()


def _like(out: torch.Tensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """``out`` with the container type of ``img`` (numpy / tensor / MetaTensor with ``img``'s metadata)."""
    return convert_to_dst_type(out, img, dtype=out.dtype)[0]


def _check_unit(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    return float(value)


def _window(x: torch.Tensor, beta: float | None) -> tuple:
    """Index of the centred low-pass window of ``x`` (all channels); the whole array when ``beta`` is None."""
    return (Ellipsis,) if beta is None else (slice(None), *low_pass_slices(tuple(x.shape[1:]), beta))


def _spectrum_like(spectrum: NdarrayOrTensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """A full centred amplitude spectrum ``(C or 1, *S)`` checked against image ``x``, on its device and dtype."""
    s = convert_to_tensor(spectrum, track_meta=False).to(device=x.device, dtype=x.dtype)
    if s.ndim != x.ndim or s.shape[1:] != x.shape[1:] or s.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"{name} must be a centred amplitude spectrum of shape (C or 1, *spatial) = "
            f"({x.shape[0]} or 1, {', '.join(map(str, x.shape[1:]))}), got {tuple(s.shape)}."
        )
    return s


def amplitude_bank(images: Sequence[NdarrayOrTensor]) -> np.ndarray:
    """Centred amplitude spectra of same-shape channel-first images, stacked to a numpy array ``(N, C, *S)``.

    This is what FedDG-style sites exchange (the phase, which carries the anatomy, never leaves the site);
    feed it to :class:`RandAmplitudeMix`. Banks from several sites concatenate along axis 0.
    """
    amps = [amplitude_phase(x, x.ndim - 1)[0] for x in map(_float_tensor, images)]
    if not amps:
        raise ValueError("images must contain at least one image.")
    shapes = sorted({tuple(a.shape) for a in amps})
    if len(shapes) > 1:
        raise ValueError(f"all images must have the same shape, got {shapes}.")
    return torch.stack(amps).cpu().numpy()


class LowFrequencyLogAmplitude(Transform):
    """Centred low-pass window of the log-amplitude ``log(1 + |F|)``: the input of the OmniFM spectral tokenizer.

    Args:
        beta: window size factor; the output has ``2b + 1`` bins per spatial axis (clipped to the image),
            ``b = max(1, floor(beta * min(spatial)))``. In (0, 0.5].

    Returns ``(C, 2b+1, ...)``. A frequency-domain descriptor has no spatial affine: a MetaTensor input gives
    a plain ``torch.Tensor``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = check_beta(beta)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = _float_tensor(img)
        out = low_pass_log_amplitude(x, x.ndim - 1, self.beta)
        return out.cpu().numpy() if isinstance(img, np.ndarray) else out


class AmplitudeMix(Transform):
    """FedDG (Liu et al., CVPR 2021) continuous frequency-space interpolation.

    Inside the centred low-pass window the amplitude becomes ``(1 - ratio) * A_img + ratio * A_target``; outside
    it, and the phase everywhere, are kept. The result is returned in image space (real part).

    Args:
        beta: low-pass window size factor, in (0, 0.5]; FedDG uses tiny windows (style, not content).
        ratio: interpolation weight in [0, 1]; 0 is the identity, 1 copies the target's low-frequency amplitude.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, beta: float = 0.01, ratio: float = 1.0) -> None:
        self.beta = check_beta(beta)
        self.ratio = _check_unit("ratio", ratio)

    def __call__(
        self, img: NdarrayOrTensor, target_amplitude: NdarrayOrTensor, ratio: float | None = None
    ) -> NdarrayOrTensor:
        """``target_amplitude``: full centred amplitude spectrum ``(C or 1, *spatial)``; ``ratio`` overrides ``self.ratio``."""
        r = self.ratio if ratio is None else _check_unit("ratio", ratio)
        x = _float_tensor(img)
        amp, pha = amplitude_phase(x, x.ndim - 1)
        w = _window(x, self.beta)
        amp[w] = (1.0 - r) * amp[w] + r * _spectrum_like(target_amplitude, x, "target_amplitude")[w]
        return _like(merge_amplitude_phase(amp, pha, x.ndim - 1), img)


class RandAmplitudeMix(RandomizableTransform):
    """:class:`AmplitudeMix` with a target drawn from a bank of amplitude spectra and a random ratio.

    Args:
        bank: amplitude spectra ``(N, C or 1, *spatial)`` (a sequence of ``(C, *spatial)`` spectra is stacked),
            e.g. :func:`amplitude_bank` of other sites' images; replace it between rounds with :meth:`set_bank`.
            ``None`` or empty: nothing to mix with yet (a federated first round), the transform is the identity.
        beta: low-pass window size factor, in (0, 0.5].
        ratio_range: the ratio is drawn uniformly from ``[low, high]``, with ``0 <= low <= high <= 1``.
        prob: probability of mixing. Defaults to 1 (FedDG mixes every training image).
    """

    backend = AmplitudeMix.backend

    def __init__(
        self,
        bank: NdarrayOrTensor | Sequence[NdarrayOrTensor] | None,
        beta: float = 0.01,
        ratio_range: tuple[float, float] = (0.0, 1.0),
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        low, high = ratio_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"ratio_range must satisfy 0 <= low <= high <= 1, got {ratio_range}.")
        self.ratio_range = (float(low), float(high))
        self.mixer = AmplitudeMix(beta=beta)
        self.set_bank(bank)
        self._index, self._ratio = 0, 0.0

    def set_bank(self, bank: NdarrayOrTensor | Sequence[NdarrayOrTensor] | None) -> None:
        """Replace the bank of amplitude spectra ``(N, C or 1, *spatial)``; ``None`` / empty disables mixing."""
        if bank is None or len(bank) == 0:
            self.bank = None
            return
        if isinstance(bank, (np.ndarray, torch.Tensor)):
            b = convert_to_tensor(bank, track_meta=False)
        else:
            b = (
                torch.stack([convert_to_tensor(a, track_meta=False) for a in bank])
                if len(bank)
                else torch.empty(0)
            )
        if not 3 <= b.ndim <= 5 or len(b) == 0:
            raise ValueError(
                f"bank must be a non-empty stack of spectra (N, C, *spatial), got {tuple(b.shape)}."
            )
        self.bank = b

    def randomize(self, data: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)
        self._do_transform = self._do_transform and self.bank is not None
        if self._do_transform:
            self._index = int(self.R.randint(len(self.bank)))
            self._ratio = float(self.R.uniform(*self.ratio_range))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        return self.mixer(img, self.bank[self._index], self._ratio)


class AmplitudeNormalize(Transform):
    """HarmoFL-style (Jiang et al., AAAI 2022) amplitude normalisation, geometric in the amplitude.

    The amplitude moves towards a reference in the log domain, ``A' = A^(1 - s) * A_ref^s`` (strength ``s``),
    over the low-pass window when ``beta`` is given, else over the full spectrum; the phase is kept.

    Args:
        reference_amplitude: full centred amplitude spectrum ``(C or 1, *spatial)``, e.g. a site's mean
            ``amplitude_bank(images).mean(0)``. None: per image and channel, the flat spectrum with the same
            energy as the normalised region, i.e. the constant ``sqrt(mean(A^2))`` over that region
            (``s = 1`` then whitens the region and, by Parseval, keeps its energy). Note that without ``beta``
            the DC bin, hence the mean intensity, is normalised too.
        strength: ``s`` in [0, 1]; 0 is the identity, 1 replaces the amplitude by the reference.
        beta: low-pass window size factor in (0, 0.5], or None for the full spectrum.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        reference_amplitude: NdarrayOrTensor | None = None,
        strength: float = 1.0,
        beta: float | None = None,
    ) -> None:
        self.reference_amplitude = reference_amplitude
        self.strength = _check_unit("strength", strength)
        self.beta = None if beta is None else check_beta(beta)

    def __call__(
        self, img: NdarrayOrTensor, reference_amplitude: NdarrayOrTensor | None = None
    ) -> NdarrayOrTensor:
        """``reference_amplitude`` overrides the one given at construction."""
        x, s = _float_tensor(img), self.strength
        amp, pha = amplitude_phase(x, x.ndim - 1)
        w = _window(x, self.beta)
        ref = self.reference_amplitude if reference_amplitude is None else reference_amplitude
        if ref is None:
            ref_w = amp[w].square().mean(dim=tuple(range(1, x.ndim)), keepdim=True).sqrt()
        else:
            ref_w = _spectrum_like(ref, x, "reference_amplitude")[w]
        amp[w] = amp[w].pow(1.0 - s) * ref_w.pow(s)  # 0^0 = 1: exact identity at s = 0, exact A_ref at s = 1
        return _like(merge_amplitude_phase(amp, pha, x.ndim - 1), img)


class SuperResolutionDegrade(Transform):
    """Low-resolution version of an image, for super-resolution training pairs.

    Modes:
        ``"area"``: box (block-mean) downsampling by ``scale``. With ``keep_size`` it is interpolated back to
        the original grid (bicubic in 2D, trilinear in 3D, linear in 1D; ``align_corners=False``; bicubic may
        overshoot the intensity range), so that a network sees same-size input and target.
        ``"kspace"``: keeps the centred ``N / scale`` k-space bins per axis (project FFT convention) and takes
        the real part, which splits an even band's edge bin between ``+-N/(2 scale)``: the output has no energy
        at ``|k| > N / (2 scale)``. With ``keep_size`` the band is zero-filled to the original matrix (the
        classic MRI low-resolution image; the mean is preserved exactly); without, the cropped band is inverted
        on the low-resolution matrix and scaled by ``sqrt(N_lr / N_hr)`` so that intensities (and the mean) are
        preserved: it equals the ``keep_size`` output sampled at every ``scale``-th voxel.

    With ``keep_size=False`` a MetaTensor's affine is updated for the new voxel size: low-res voxel ``j`` is
    centred on high-res voxel ``scale * j + (scale - 1) / 2`` in ``"area"`` mode (the block centre) and on
    high-res voxel ``scale * j`` in ``"kspace"`` mode (where the band-limited image is sampled).

    Args:
        scale: integer downsampling factor (e.g. 2, 4, 8); the spatial sizes must be divisible by it.
        mode: ``"area"`` or ``"kspace"``.
        keep_size: return the original matrix size (True) or the low-resolution one (False).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    upsample_modes = {1: "linear", 2: "bicubic", 3: "trilinear"}

    def __init__(self, scale: int = 2, mode: str = "area", keep_size: bool = True) -> None:
        if isinstance(scale, bool) or int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}.")
        if mode not in ("area", "kspace"):
            raise ValueError(f"mode must be 'area' or 'kspace', got {mode!r}.")
        self.scale, self.mode, self.keep_size = int(scale), mode, keep_size

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = _float_tensor(img)
        shape, s, sd = tuple(x.shape[1:]), self.scale, x.ndim - 1
        if any(n % s for n in shape):
            raise ValueError(f"spatial shape {shape} must be divisible by scale={s}.")
        lr_shape = tuple(n // s for n in shape)
        if self.mode == "area":
            out = F.interpolate(x[None], size=lr_shape, mode="area")
            if self.keep_size:
                out = F.interpolate(out, size=shape, mode=self.upsample_modes[sd], align_corners=False)
            out = out[0]
        else:
            f = fft_centered(x, sd)
            band = (
                slice(None),
                *(slice(n // 2 - m // 2, n // 2 - m // 2 + m) for n, m in zip(shape, lr_shape, strict=True)),
            )
            if self.keep_size:
                zero_filled = torch.zeros_like(f)
                zero_filled[band] = f[band]
                out = ifft_centered(zero_filled, sd)
            else:
                out = ifft_centered(f[band], sd) * math.sqrt(math.prod(lr_shape) / math.prod(shape))
        out = _like(out, img)
        if isinstance(out, MetaTensor) and not self.keep_size:
            xform = scale_affine(shape, lr_shape, centered=self.mode == "area")
            out.affine = out.affine @ torch.as_tensor(
                to_affine_nd(len(out.affine) - 1, xform), dtype=torch.float64
            )
        return out


class ConvertBraTSLabels(Transform):
    """Map BraTS label values {0, 1, 2, 4} to classes {0, 1, 2, 3} (BraTS 2023's 3 stays 3),
    or with ``whole_tumour=True`` to a binary whole-tumour mask. For TC/WT/ET channels use MONAI's
    ``ConvertToMultiChannelBasedOnBratsClasses`` instead."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, whole_tumour: bool = False) -> None:
        self.whole_tumour = whole_tumour

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        out = (img_t > 0).to(img_t.dtype) if self.whole_tumour else torch.where(img_t == 4, 3, img_t)
        return convert_to_dst_type(out, img)[0]
