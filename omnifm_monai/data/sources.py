"""Source volumes: the real images that ship inside packages, loaded in RAS+ and scaled to [0, 1].

- ICBM152 2009a T1 with its grey / white-matter probability maps (nilearn);
- Colin27 T1 with its ``ch2bet`` brain mask (Debian ``mricron-data``), GM / WM by 1D k-means;
- a head CT (Debian ``invesalius-examples``), brain and bone masks from HU thresholds;
- an EPI frame (nibabel) and a DWI b0 (dipy), images only.

Each loader returns a :class:`_Volume` that records where the image and its label maps come from;
:func:`packaged_image` gives the path of such a file for demos and inference examples.
"""

from __future__ import annotations

import importlib.util
import io
import plistlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

__all__ = ["CT_BONE_HU", "INVESALIUS_FILE", "MRICRON_DIR", "packaged_image"]

MRICRON_DIR = "/usr/share/mricron/templates"  # Debian mricron-data
INVESALIUS_FILE = "/usr/share/doc/invesalius-examples/examples/Cranium.inv3"  # Debian invesalius-examples
_ICBM = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
CT_BONE_HU = 300.0  # cortical/cancellous bone; InVesalius' own bone preset starts at 226 HU


@dataclass
class _Volume:
    """One source volume in RAS+ voxel order, intensities already scaled to [0, 1]."""

    name: str
    image: np.ndarray
    affine: np.ndarray
    source: str
    package: str
    image_kind: str = "real"
    tissue: np.ndarray | None = None  # (2, X, Y, Z) GM / WM probabilities -> segmentation labels
    tissue_source: str | None = None
    brain: np.ndarray | None = None  # brain mask whose axial extent defines the level classes
    brain_source: str | None = None
    bone: np.ndarray | None = None  # CT bone mask (HU threshold), used by VQA
    skull_stripped: bool | None = None
    crop: tuple[int, int, int, int] | None = None  # in-plane box (x0, x1, y0, y1) shared by all slices


# ------------------------------------------------------------------------------------------ helpers
def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed.")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def packaged_image(name: str) -> str:
    """Path of a real image that ships inside an installed package, for demos and inference examples.

    ``"icbm152_t1"`` (nilearn), ``"colin27_t1"`` (Debian mricron-data), or a pydicom-data file name such as
    ``"MR_small.dcm"`` / ``"CT_small.dcm"``.
    """
    if name == "icbm152_t1":
        path = _package_file("nilearn", "datasets", "data", _ICBM.format("t1"))
    elif name == "colin27_t1":
        path = Path(MRICRON_DIR, "ch2.nii.gz")
    else:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name)
        path = Path(found) if found else Path(name)
    if not path.exists():
        raise FileNotFoundError(f"packaged image {name!r} not found at {path} (is its package installed?).")
    return str(path)


def _canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _load(path: Path, frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return _canonical(data[..., frame] if frame is not None else data, img.affine)


def _rescale(vol: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Robust per-volume scaling: [lower percentile of all voxels, upper percentile of those above] -> [0, 1]."""
    lo = np.percentile(vol, lower)
    above = vol[vol > lo]
    hi = np.percentile(above, upper) if above.size else lo + 1
    return np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1) if n else mask


def _crop_box(mask: np.ndarray, margin: int = 4) -> tuple[int, int, int, int]:
    """In-plane bounding box of a 3D foreground mask (union over slices) plus a margin."""
    xs, ys = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0]
    nx, ny = mask.shape[:2]
    return (
        max(xs[0] - margin, 0),
        min(xs[-1] + 1 + margin, nx),
        max(ys[0] - margin, 0),
        min(ys[-1] + 1 + margin, ny),
    )


def _kmeans_1d(values: np.ndarray, k: int = 3, iters: int = 100) -> np.ndarray:
    """Deterministic 1D k-means (centres start at percentiles) on the value histogram; sorted centres."""
    values, counts = np.unique(values, return_counts=True)  # few distinct values (uint8 source): fast
    centres = np.percentile(np.repeat(values, counts), np.linspace(10, 90, k))
    for _ in range(iters):
        assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        w = np.stack([counts * (assign == c) for c in range(k)])
        centres = np.where(w.sum(1) > 0, (w * values).sum(1) / np.maximum(w.sum(1), 1), centres)
    return np.sort(centres)


# ----------------------------------------------------------------------------------------- sources
def _icbm_t1() -> _Volume:
    path = lambda k: _package_file("nilearn", "datasets", "data", _ICBM.format(k))  # noqa: E731
    t1, affine = _load(path("t1"))
    gm, wm = (_load(path(k))[0] / 255.0 for k in ("gm", "wm"))  # probabilities stored as uint8 0..255
    brain = (gm + wm) >= 0.5
    return _Volume(
        "icbm152_2009a", _rescale(t1), affine, f"nilearn:{_ICBM.format('t1')}", "nilearn",
        tissue=np.stack([gm, wm]), tissue_source="template", brain=brain, brain_source="template",
        skull_stripped=True, crop=_crop_box(t1 > 0),
    )  # fmt: skip


def _colin_t1(mricron_dir: Path) -> _Volume:
    ch2, affine = _load(mricron_dir / "ch2.nii.gz")
    bet = _load(mricron_dir / "ch2bet.nii.gz")[0] > 0  # brain extraction shipped with the template
    csf_gm, gm_wm = np.convolve(_kmeans_1d(ch2[bet]), [0.5, 0.5], "valid")  # boundaries between centres
    gm = bet & (ch2 > csf_gm) & (ch2 <= gm_wm)
    wm = bet & (ch2 > gm_wm)
    head = _largest_component(ch2 > 0.1 * ch2.max())
    return _Volume(
        "colin27", _rescale(ch2), affine, "mricron-data:ch2.nii.gz", "mricron-data",
        tissue=np.stack([gm, wm]).astype(np.float32), tissue_source="algorithmic", brain=bet,
        brain_source="template", skull_stripped=False, crop=_crop_box(head),
    )  # fmt: skip


def _head_ct(inv3: Path, window: tuple[float, float]) -> _Volume:
    """InVesalius project: gzipped tar with ``main.plist`` (shape, spacing) and ``matrix.dat`` (int16 HU)."""
    with tarfile.open(inv3, "r:gz") as tar:
        files = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        meta = plistlib.load(io.BytesIO(tar.extractfile(files["main.plist"]).read()))  # type: ignore[union-attr]
        raw = tar.extractfile(files[meta["matrix"]["filename"]]).read()  # type: ignore[union-attr]
    hu = np.frombuffer(raw, dtype=meta["matrix"]["dtype"]).reshape(meta["matrix"]["shape"])  # (z, y, x)
    hu = hu.transpose(2, 1, 0).astype(np.float32)
    sx, sy, sz = meta["spacing"]
    # InVesalius stores rows flipped (anterior = increasing row, checked on the face); columns are assumed
    # to run to the patient's left as in DICOM (not verifiable from the pixels); slice 0 is inferior.
    hu, affine = _canonical(hu, np.diag([-sx, sy, sz, 1.0]))
    smooth = ndi.gaussian_filter(hu, 1.0)
    st = ndi.generate_binary_structure(3, 1)  # brain: largest soft-tissue (10-60 HU) blob after erosion
    soft = (smooth > 10) & (smooth < 60)
    core = _largest_component(ndi.binary_erosion(soft, st, iterations=3))
    brain = ndi.binary_dilation(core, st, iterations=3) & soft
    level, width = window  # window first (e.g. brain window L40/W80), then [0, 1]
    image = np.clip((hu - (level - width / 2)) / width, 0, 1).astype(np.float32)
    return _Volume(
        "cranium_promed_ct0051", image, affine, f"invesalius-examples:{inv3.name}", "invesalius-examples",
        brain=brain, brain_source="threshold", bone=hu > CT_BONE_HU, skull_stripped=False,
        crop=_crop_box(_largest_component(hu > -300)),  # head without the table
    )  # fmt: skip


def _real_sr(name: str, package: str, parts: tuple[str, ...], frame: int | None) -> _Volume:
    data, affine = _load(_package_file(package, *parts), frame)
    image = _rescale(data)
    fg = _largest_component(image > 0.1)
    return _Volume(name, image, affine, f"{package}:{parts[-1]}", package, crop=_crop_box(fg))
