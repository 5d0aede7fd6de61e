"""Simulated images from the real source volumes: MR contrasts from tissue maps, and scanner models.

- T2w / PDw / FLAIR (:data:`SEQUENCES`): partial-volume mix of per-tissue spin-echo / inversion-recovery
  signals from the real ICBM grey / white-matter maps (BrainWeb 1.5 T tissue parameters, :data:`TISSUE`),
  plus a smooth bias field and Rician noise;
- T1 scanners (:data:`SCANNERS`): a real T1 through a contrast curve (gamma), point-spread blur, bias field
  and Rician noise of its own.

Randomness comes from :func:`_rng`, keyed by the seed and names, so nothing depends on build order.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from .sources import _ICBM, _rescale, _Volume

__all__ = ["SCANNERS", "SEQUENCES", "TISSUE"]

# BrainWeb tissue parameters at 1.5 T, (T1 ms, T2 ms, PD): Kwan et al., IEEE TMI 18(11) 1999;
# Aubert-Broche et al., NeuroImage 32(1) 2006, Table 1.
TISSUE = {"csf": (2569.0, 329.0, 1.00), "gm": (833.0, 83.0, 0.86), "wm": (500.0, 70.0, 0.77)}
# (TR, TE, TI) ms: BrainWeb-like dual spin echo for T2w/PDw; FLAIR TI set to null CSF (None = computed)
SEQUENCES = {
    "icbm_t2w": (3300.0, 120.0, 0.0),
    "icbm_pdw": (3300.0, 35.0, 0.0),
    "icbm_flair": (9000.0, 120.0, None),
}
# simulated T1 scanners: (source site, bias field strength, gamma, blur FWHM in voxels (x, y, z), noise)
SCANNERS = {
    "t1_scanner_a": ("icbm_t1", 0.35, 0.7, (1.0, 1.0, 1.0), 0.02),  # strong coil bias, flat contrast, clean
    "t1_scanner_b": ("icbm_t1", 0.10, 1.5, (2.0, 2.0, 4.0), 0.06),  # steep contrast, thick slices, noisy
    "t1_scanner_c": ("colin_t1", 0.20, 1.2, (1.5, 1.5, 2.5), 0.04),  # another head, moderate everything
}


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """Generator keyed by the seed and names, so results do not depend on build order."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _simulate(t1: _Volume, site: str, seed: int, noise: float) -> _Volume:
    """T2w / PDw / FLAIR from the real ICBM tissue maps: partial-volume mix of per-tissue signals."""
    tr, te, ti = SEQUENCES[site]
    gm, wm = t1.tissue  # type: ignore[misc]
    csf = np.clip((t1.image > 0) - gm - wm, 0, 1)  # the template is brain-extracted: mask = T1 > 0
    if ti is None:  # FLAIR: inversion time nulling CSF, 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0
        t1_csf = TISSUE["csf"][0]
        ti = t1_csf * np.log(2.0 / (1.0 + np.exp(-tr / t1_csf)))
    signal = np.zeros_like(gm)
    for prob, (t1_t, t2_t, pd) in zip((csf, gm, wm), TISSUE.values(), strict=True):
        recovery = 1 - np.exp(-tr / t1_t) if not ti else abs(1 - 2 * np.exp(-ti / t1_t) + np.exp(-tr / t1_t))
        signal += prob * pd * recovery * np.exp(-te / t2_t)
    rng = _rng(seed, site)
    signal *= _bias_field(signal.shape, 0.1, rng)  # about +-20 % across the head
    signal = _rician(signal, noise, rng)
    source = "nilearn:" + _ICBM.format("{gm,wm,t1}")
    return replace(
        t1, image=_rescale(signal.astype(np.float32)), source=source, image_kind="simulated-contrast"
    )


def _bias_field(shape: Sequence[int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field exp(sum of random linear and quadratic terms per axis)."""
    coords = np.meshgrid(
        *(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True
    )
    return np.exp(
        sum(c * rng.uniform(-strength, strength) + c * c * rng.uniform(-strength, strength) for c in coords)
    )


def _rician(signal: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of complex Gaussian noise added to ``signal``; sigma relative to the brightest tissue."""
    sigma = noise * np.percentile(signal[signal > 0], 99.5)
    return np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))


def _scanner(vol: _Volume, site: str, seed: int) -> _Volume:
    """A real T1 as another scanner would show it: contrast curve, point-spread blur, bias field, noise."""
    _, strength, gamma, fwhm, noise = SCANNERS[site]
    rng = _rng(seed, site)
    signal = ndi.gaussian_filter(vol.image**gamma, np.asarray(fwhm) / 2.355)  # FWHM -> sigma
    signal = _rician(signal * _bias_field(signal.shape, strength, rng), noise, rng)
    return replace(vol, image=_rescale(signal.astype(np.float32)), image_kind="simulated-scanner",
                   source=f"{vol.source} through simulated scanner {site}")  # fmt: skip
