"""How a virtual subject looks: per-subject intensity variation, simulated contrasts, simulated scanners.

- Real intensities (:func:`real_appearance`): the deformed real image through a per-subject contrast curve
  (gamma) and, for MR, a smooth bias field.
- Simulated contrasts (:func:`simulate_contrast`): the spin-echo / inversion-recovery signal of each tissue
  (BrainWeb parameters of :mod:`.simulation`, jittered per subject) mixed by the tissue fractions (partial
  volume), with a smooth multiplicative texture of its own inside each tissue, point-spread blur, bias field
  and Rician noise, so that the image is not a deterministic function of the label map (:class:`Realism`).
- Simulated scanners (:func:`scan`): a T1 through the contrast curve, blur, bias and noise of one of the
  :data:`~omnifm_monai.data.simulation.SCANNERS`, with its blur given in mm.

Every function returns the image and the JSON-ready parameters it drew.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage as ndi

from .simulation import SCANNERS, SEQUENCES, TISSUE, _bias_field, _rician
from .sources import _rescale
from .subjects import _Anatomy

__all__ = ["CONTRASTS", "Realism", "real_appearance", "scan", "simulate_contrast"]

# (TR, TE, TI) ms: SEQUENCES' T2w / PDw / FLAIR (TI None: nulls CSF), and a spin-echo T1w (TR 600, TE 10)
# whose only use is to compare a simulated T1 with the real one (the realism check)
CONTRASTS = {
    "t1w": (600.0, 10.0, 0.0),
    "t2w": SEQUENCES["icbm_t2w"],
    "pdw": SEQUENCES["icbm_pdw"],
    "flair": SEQUENCES["icbm_flair"],
}


@dataclass(frozen=True)
class Realism:
    """Per-subject appearance parameters (fractions are relative; lengths in mm).

    The defaults keep a simulated T1 from being easier to segment than the real-intensity T1 (texture and
    tissue jitter matter most: without them a Local segmentation model scored higher on simulated T1)."""

    gamma: float = 0.1  # contrast curve image**g, g = exp(U(-gamma, gamma)) (real intensities and scanners)
    bias: float = 0.1  # bias field strength (every MR subject), about +-2x this across the head
    tissue_jitter: float = 0.08  # relative s.d. of each tissue's T1, T2 and PD per subject (simulated)
    texture: float = 0.08  # s.d. of the smooth multiplicative texture inside each tissue (simulated)
    texture_mm: float = 3.0  # correlation length (Gaussian sigma) of that texture
    blur_mm: float = 3.0  # point-spread FWHM (simulated)
    noise: float = 0.03  # Rician sigma, fraction of the brightest tissue (simulated), on the volume grid

    def __post_init__(self):
        if min(asdict(self).values()) < 0:
            raise ValueError(f"realism parameters must be >= 0, got {self}.")

    @classmethod
    def of(cls, value: Realism | dict | None) -> Realism:
        """From an instance, a (partial) dict of its fields as a command line passes it, or ``None``."""
        if isinstance(value, Realism):
            return value
        unknown = set(value or {}) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown realism parameter(s) {sorted(unknown)}; known: {asdict(cls())}.")
        return cls(**(value or {}))


def _voxel_mm(anat: _Anatomy) -> float:
    return float(np.linalg.norm(anat.affine[:3, 0]))


def _smooth_noise(shape, sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-s.d. Gaussian random field with correlation length ``sigma_vox`` voxels."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return (field - field.mean()) / max(float(field.std()), 1e-8)


def real_appearance(anat: _Anatomy, realism: Realism, rng: np.random.Generator, mr: bool = True):
    """The subject's real image through a contrast curve (gamma) and, for MR, a bias field."""
    gamma = float(np.exp(rng.uniform(-realism.gamma, realism.gamma)))
    image = anat.image**gamma
    if mr:
        image = image * _bias_field(image.shape, realism.bias, rng)
    return _rescale(image.astype(np.float32)), {"gamma": round(gamma, 4), "bias": realism.bias if mr else 0.0}


def simulate_contrast(anat: _Anatomy, contrast: str, realism: Realism, rng: np.random.Generator):
    """A :data:`CONTRASTS` image of the subject from its tissue fractions (CSF, GM, WM), with texture, blur,
    bias field and Rician noise; tissue parameters jittered per subject."""
    tr, te, ti = CONTRASTS[contrast]
    if ti is None:  # FLAIR: the protocol nulls the nominal CSF, 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0
        t1_csf = TISSUE["csf"][0]
        ti = t1_csf * np.log(2.0 / (1.0 + np.exp(-tr / t1_csf)))
    voxel = _voxel_mm(anat)
    gm, wm = anat.tissue  # type: ignore[misc]
    signal = np.zeros_like(gm)
    drawn = {}
    for name, fraction in zip(TISSUE, (anat.csf, gm, wm), strict=True):
        t1, t2, pd = np.asarray(TISSUE[name]) * np.exp(rng.normal(0, realism.tissue_jitter, 3))
        recovery = 1 - np.exp(-tr / t1) if not ti else abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1))
        texture = 1 + realism.texture * _smooth_noise(gm.shape, realism.texture_mm / voxel, rng)
        signal += fraction * pd * recovery * np.exp(-te / t2) * np.clip(texture, 0, None)
        drawn[name] = [round(float(v), 2) for v in (t1, t2, pd)]
    signal = ndi.gaussian_filter(signal, realism.blur_mm / voxel / 2.355)  # FWHM -> sigma
    signal = _rician(signal * _bias_field(signal.shape, realism.bias, rng), realism.noise, rng)
    params = {"contrast": contrast, "tr_te_ti_ms": [tr, te, round(float(ti), 1)], "tissue_t1_t2_pd": drawn,
              **{k: v for k, v in asdict(realism).items() if k != "gamma"}}  # fmt: skip
    return _rescale(signal.astype(np.float32)), params


def scan(anat: _Anatomy, scanner: str, rng: np.random.Generator):
    """The subject's (T1) image as a :data:`SCANNERS` scanner shows it: gamma, blur (FWHM read as mm),
    bias field of that scanner's strength, Rician noise."""
    _, strength, gamma, fwhm, noise = SCANNERS[scanner]
    sigma = np.asarray(fwhm) / _voxel_mm(anat) / 2.355
    signal = ndi.gaussian_filter(anat.image**gamma, sigma)
    signal = _rician(signal * _bias_field(signal.shape, strength, rng), noise, rng)
    params = {
        "scanner": scanner,
        "bias": strength,
        "gamma": gamma,
        "blur_fwhm_mm": list(fwhm),
        "noise": noise,
    }
    return _rescale(signal.astype(np.float32)), params
