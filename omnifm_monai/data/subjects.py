"""Virtual subjects: one real anatomy made into many by random smooth diffeomorphic deformations.

A source volume (:mod:`.sources`) is first put on an isotropic grid (:func:`resample_volume`, e.g. 2 mm, so
that a whole federation builds in minutes on a CPU). A virtual subject is that volume warped, image and every
label map together, by one displacement field :func:`random_deformation`: the exponential of a random
stationary velocity field ``v(x) = L (x - centre) + n(x)`` (``L``: small global scaling and rotation, the
head's size and pose; ``n``: a smooth random field, the local shape), integrated by scaling and squaring
(MONAI's :class:`~monai.networks.blocks.DVF2DDF`). The exponential of a smooth velocity field is a
diffeomorphism: it neither folds nor tears, so labels stay where their tissue goes. Its Jacobian determinant
is checked on the generated field, and a field that folds is refused.

Randomness comes from the generator the caller passes (keyed by seed, site and subject in the builder), so
a subject is reproducible from those keys alone.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Warp
from scipy import ndimage as ndi

from .sources import _Volume

__all__ = [
    "Deformation",
    "jacobian_determinant",
    "random_deformation",
    "resample_volume",
    "virtual_subject",
    "warp",
]

_MAPS = ("image", "tissue", "brain", "bone", "csf")  # every array a volume carries, deformed together
_MASKS = ("brain", "bone")  # stored as booleans: interpolated as fractions, then thresholded at one half


@dataclass
class _Anatomy(_Volume):
    """A source volume that also carries its CSF fraction (brain-extracted MR), for simulated contrasts."""

    csf: np.ndarray | None = None


@dataclass(frozen=True)
class Deformation:
    """Parameters of the random stationary velocity field (lengths in mm, so independent of the grid)."""

    scale: float = 0.06  # global scaling per axis: exp(U(-scale, scale)), about +-6 % head size / shape
    rotate_deg: float = 4.0  # global rotation about each axis: U(-rotate_deg, rotate_deg) degrees
    displacement_mm: float = 2.5  # standard deviation of the smooth field n, per component
    spacing_mm: float = 32.0  # control-point spacing of n: its smoothness (cubic B-spline between points)
    steps: int = 7  # scaling-and-squaring steps (the field is divided by 2**steps, then composed)

    def __post_init__(self):
        if (
            min(self.scale, self.rotate_deg, self.displacement_mm) < 0
            or self.spacing_mm <= 0
            or self.steps < 1
        ):
            raise ValueError(f"deformation parameters must be >= 0 (spacing_mm > 0, steps >= 1), got {self}.")

    @classmethod
    def of(cls, value: Deformation | dict | None) -> Deformation:
        """From an instance, a (partial) dict of its fields as a command line passes it, or ``None``."""
        if isinstance(value, Deformation):
            return value
        unknown = set(value or {}) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown deformation parameter(s) {sorted(unknown)}; known: {asdict(cls())}.")
        return cls(**(value or {}))


# --------------------------------------------------------------------------------------------- grid
def _arrays(vol: _Volume) -> dict[str, np.ndarray]:
    """The volume's maps as float32 (C, X, Y, Z) arrays, masks as fractions."""
    out = {}
    for key in _MAPS:
        value = getattr(vol, key, None)
        if value is not None:
            value = np.asarray(value, dtype=np.float32)
            out[key] = value if value.ndim == 4 else value[None]
    return out


def _with_arrays(vol: _Volume, arrays: dict[str, np.ndarray], **changes) -> _Anatomy:
    """A copy of ``vol`` (as an :class:`_Anatomy`) holding ``arrays``: masks thresholded, single maps squeezed."""
    values = {k: (a[0] >= 0.5 if k in _MASKS else a if k == "tissue" else a[0]) for k, a in arrays.items()}
    base = {f.name: getattr(vol, f.name) for f in fields(_Volume)}
    return replace(_Anatomy(**base, csf=getattr(vol, "csf", None)), **values, **changes)


def resample_volume(vol: _Volume, spacing: float, margin_mm: float = 12.0) -> _Anatomy:
    """``vol`` on an isotropic ``spacing`` mm grid (anti-aliased, linear), cut to its in-plane crop box plus
    ``margin_mm`` (room for the deformation); the crop box is kept, so every subject has the same field of view."""
    voxel = np.linalg.norm(vol.affine[:3, :3], axis=0)
    step = spacing / voxel  # source voxels per output voxel, per axis
    shape = (np.asarray(vol.image.shape) - 1) // step + 1
    x0, x1, y0, y1 = vol.crop or (0, vol.image.shape[0], 0, vol.image.shape[1])
    box = np.array([[x0, x1], [y0, y1]]) / step[:2, None]
    margin = int(np.ceil(margin_mm / spacing))
    lo = np.maximum(np.floor(box[:, 0]).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(box[:, 1]).astype(int) + margin, shape[:2].astype(int))
    start = np.array([lo[0], lo[1], 0])
    out_shape = (hi[0] - lo[0], hi[1] - lo[1], int(shape[2]))
    sigma = np.maximum((step - 1) / 2, 0)  # anti-alias as slicing._resample does

    def _one(a: np.ndarray) -> np.ndarray:
        smooth = ndi.gaussian_filter(a, sigma) if sigma.any() else a
        return ndi.affine_transform(smooth, step, offset=start * step, output_shape=out_shape, order=1)

    arrays = {k: np.stack([_one(c) for c in a]) for k, a in _arrays(vol).items()}
    affine = vol.affine @ np.diag([*step, 1.0])
    affine[:3, 3] = vol.affine[:3, :3] @ (start * step) + vol.affine[:3, 3]
    crop = (*(int(v) for v in (np.floor(box[0, 0]) - lo[0], np.ceil(box[0, 1]) - lo[0])),
            *(int(v) for v in (np.floor(box[1, 0]) - lo[1], np.ceil(box[1, 1]) - lo[1])))  # fmt: skip
    return _with_arrays(vol, arrays, affine=affine, crop=crop)


# -------------------------------------------------------------------------------------- deformation
def _warp_layer(mode: str, padding_mode: str) -> Warp:
    with warnings.catch_warnings():  # MONAI warns that it uses torch's grid_sample (no compiled extension)
        warnings.simplefilter("ignore")
        return Warp(mode=mode, padding_mode=padding_mode)


def warp(array: np.ndarray, ddf: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """``array`` (C, X, Y, Z) resampled at ``x + ddf(x)`` (voxel units, MONAI's :class:`Warp` convention)."""
    image, field = (torch.as_tensor(np.asarray(a, dtype=np.float32))[None] for a in (array, ddf))
    with torch.no_grad():
        out = _warp_layer(mode, "zeros")(image, field)
    return out[0].numpy()


def jacobian_determinant(ddf: np.ndarray) -> np.ndarray:
    """det(I + grad u) of the map x -> x + u(x), ``ddf`` = u as (3, X, Y, Z) in voxels (central differences)."""
    j = np.stack([np.stack(np.gradient(u), 0) for u in ddf], 0)  # j[i, k] = d u_i / d x_k
    j[0, 0] += 1
    j[1, 1] += 1
    j[2, 2] += 1
    return (
        j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
        - j[0, 1] * (j[1, 0] * j[2, 2] - j[1, 2] * j[2, 0])
        + j[0, 2] * (j[1, 0] * j[2, 1] - j[1, 1] * j[2, 0])
    )


def _rotation_generator(angles: np.ndarray) -> np.ndarray:
    """Skew-symmetric matrix whose exponential rotates by ``angles`` (radians) about x, y, z."""
    ax, ay, az = angles
    return np.array([[0, -az, ay], [az, 0, -ax], [-ay, ax, 0]])


def random_deformation(
    shape: tuple[int, int, int], voxel_mm: float, rng: np.random.Generator, deformation: Deformation
) -> tuple[np.ndarray, dict]:
    """A random diffeomorphic displacement field on an isotropic grid and the parameters that made it.

    The velocity field is integrated on a grid of half the resolution (it is smooth on a scale of
    ``spacing_mm``, so nothing is lost, and integration is 8x cheaper), then interpolated to ``shape``.

    Returns:
        ``ddf`` (3, X, Y, Z) float32 in voxels, for :func:`warp`; ``params`` (JSON-ready): the sampled scales
        and rotations, the field's settings, its largest displacement (mm) and Jacobian determinant range.
    """
    d = deformation
    scales = np.exp(rng.uniform(-d.scale, d.scale, 3))
    angles = rng.uniform(-d.rotate_deg, d.rotate_deg, 3)
    n_ctrl = [max(2, int(np.ceil((n - 1) * voxel_mm / d.spacing_mm)) + 1) for n in shape]
    ctrl = rng.standard_normal((3, *n_ctrl)) * d.displacement_mm / voxel_mm  # control points, voxels

    full = np.asarray(shape)
    coarse = (full - 1) // 2 + 1
    ratio = (full - 1) / np.maximum(coarse - 1, 1)  # full voxels per coarse voxel, per axis
    local = np.stack([ndi.zoom(c, coarse / np.asarray(n_ctrl), order=3, grid_mode=False) for c in ctrl])
    grid = np.stack(
        np.meshgrid(*(np.arange(m) * r for m, r in zip(coarse, ratio, strict=True)), indexing="ij")
    )
    linear = np.diag(np.log(scales)) + _rotation_generator(np.deg2rad(angles))
    centred = grid - ((full - 1) / 2)[:, None, None, None]
    velocity = np.einsum("ij,j...->i...", linear, centred) + local  # full voxels, at coarse points
    velocity = torch.from_numpy((velocity / ratio[:, None, None, None]).astype(np.float32))[None]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ddf = DVF2DDF(num_steps=d.steps, padding_mode="border")(velocity)  # coarse voxels
        ddf = ddf * torch.from_numpy(ratio.astype(np.float32))[None, :, None, None, None]
        ddf = F.interpolate(ddf, size=tuple(int(n) for n in full), mode="trilinear", align_corners=True)
    ddf = ddf[0].numpy()
    det = jacobian_determinant(ddf)
    params = {
        "model": "exp(stationary velocity field), scaling and squaring",
        "scale": [round(float(s), 4) for s in scales],
        "rotation_deg": [round(float(a), 3) for a in angles],
        **{k: v for k, v in asdict(d).items() if k not in ("scale", "rotate_deg")},
        "max_displacement_mm": round(float(np.sqrt((ddf**2).sum(0)).max() * voxel_mm), 3),
        "jacobian_range": [round(float(det.min()), 4), round(float(det.max()), 4)],
    }
    if det.min() <= 0:
        raise ValueError(
            f"the sampled deformation folds (min Jacobian determinant {det.min():.3f}); lower "
            f"displacement_mm / scale / rotate_deg or raise spacing_mm ({d})."
        )
    return ddf, params


def virtual_subject(
    vol: _Volume, name: str, rng: np.random.Generator, deformation: Deformation
) -> tuple[_Anatomy, np.ndarray, dict]:
    """``vol`` (on an isotropic grid, :func:`resample_volume`) warped by one random diffeomorphism.

    Image, tissue fractions, CSF and masks move together (bilinear; masks thresholded at one half after).
    Returns the subject (named ``name``), its displacement field and the deformation parameters.
    """
    voxel = float(np.linalg.norm(vol.affine[:3, 0]))
    ddf, params = random_deformation(vol.image.shape, voxel, rng, deformation)
    arrays = _arrays(vol)
    stacked = warp(np.concatenate(list(arrays.values())), ddf)
    sizes = np.cumsum([len(a) for a in arrays.values()])[:-1]
    warped = dict(zip(arrays, np.split(stacked, sizes), strict=True))
    return _with_arrays(vol, warped, name=name), ddf, params
