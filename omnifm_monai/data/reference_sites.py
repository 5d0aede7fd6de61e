"""Reference sites: 2D slices of real images that ship inside packages, one site per modality.

What is real and what is not:

- ``icbm_t1``: real ICBM152 2009a T1 (nilearn); GM/WM labels from the template's own probability maps.
- ``colin_t1``: real Colin27 T1 (Debian ``mricron-data``); GM/WM labels by 3-class k-means (algorithmic).
- ``icbm_t2w`` / ``icbm_pdw`` / ``icbm_flair``: **simulated contrast** from the real ICBM tissue maps
  (spin-echo / inversion-recovery signal equations, Rician noise, bias field); labels = ``icbm_t1``'s.
- ``t1_scanner_a`` / ``t1_scanner_b`` / ``t1_scanner_c``: the real ICBM (a, b) or Colin27 (c) T1 seen through
  a **simulated scanner**: smooth bias field, contrast curve (gamma), point-spread blur and Rician noise of
  its own (:data:`SCANNERS`); labels = the source volume's. They make the intra-modality scenario.
- ``head_ct``: real head CT (Debian ``invesalius-examples``); bone and brain masks from HU thresholds.
- ``epi_t2star`` (nibabel) / ``dwi_b0`` (dipy): real EPI and b0 volumes, super-resolution only.

Every item records its provenance. Splits are contiguous axial slabs separated by ``gap`` slices, so no
held-out slice neighbours a training slice of the same volume; ICBM-derived sites share one split.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import plistlib
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import PathLike
from scipy import ndimage as ndi

from omnifm_monai.transforms.text import build_vocabulary

__all__ = ["LEVELS", "SCANNERS", "SITES", "TASKS", "VQA_ANSWERS", "build_reference_sites"]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
TASKS = ("segmentation", "classification", "super_resolution", "vqa")
LEVELS = ("inferior", "lower-middle", "upper-middle", "superior")
SEG_LABELS = {"0": "background", "1": "grey matter", "2": "white matter"}
MRICRON_DIR = "/usr/share/mricron/templates"  # Debian mricron-data
INVESALIUS_FILE = "/usr/share/doc/invesalius-examples/examples/Cranium.inv3"  # Debian invesalius-examples
_ICBM = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_ALL, _SR = TASKS, ("super_resolution",)
# site -> (modality, VQA modality answer, tasks); VQA answers are a fixed union so every site shares them
SITES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "icbm_t1": ("MR T1w", "mri t1", _ALL),
    "colin_t1": ("MR T1w", "mri t1", _ALL),
    "icbm_t2w": ("MR T2w", "mri t2", _ALL),
    "icbm_pdw": ("MR PDw", "mri pd", _ALL),
    "icbm_flair": ("MR FLAIR", "mri flair", _ALL),
    "t1_scanner_a": ("MR T1w", "mri t1", _ALL),
    "t1_scanner_b": ("MR T1w", "mri t1", _ALL),
    "t1_scanner_c": ("MR T1w", "mri t1", _ALL),
    "head_ct": ("CT", "ct", ("classification", "super_resolution", "vqa")),
    "epi_t2star": ("MR T2*w EPI", None, _SR),
    "dwi_b0": ("MR DWI b0", None, _SR),
}
QUESTIONS = {
    "modality": "What modality is this image?",
    "level": "At which level of the brain is this axial slice?",
    "presence": "Is {} visible in this image?",
    "size": "Is the grey matter area larger than the white matter area?",
}
VQA_ANSWERS = sorted({a for _, a, _ in SITES.values() if a} | set(LEVELS) | {"yes", "no"})
LICENCES = {
    "nilearn": "BSD-3 (ICBM152 2009a template: McConnell Brain Imaging Centre terms, free use with notice)",
    "mricron-data": "BSD-3 (Colin27 upstream terms)",
    "invesalius-examples": "GPL-2",
    "nibabel": "MIT",
    "dipy": "BSD-3",
}
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
CT_BONE_HU = 300.0  # cortical/cancellous bone; InVesalius' own bone preset starts at 226 HU
VISIBLE_FRACTION = 0.005  # a tissue is "visible" when it covers >= 0.5 % of the slice


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


def _extent(mask: np.ndarray, fraction: float = 0.1) -> tuple[int, int]:
    """Axial extent: first/last slice whose mask area is >= ``fraction`` of the largest (drops thin tails)."""
    area = mask.sum(axis=(0, 1))
    z = np.nonzero(area >= fraction * area.max())[0]
    return int(z[0]), int(z[-1])


def _kmeans_1d(values: np.ndarray, k: int = 3, iters: int = 100) -> np.ndarray:
    """Deterministic 1D k-means (centres start at percentiles) on the value histogram; sorted centres."""
    values, counts = np.unique(values, return_counts=True)  # few distinct values (uint8 source): fast
    centres = np.percentile(np.repeat(values, counts), np.linspace(10, 90, k))
    for _ in range(iters):
        assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        w = np.stack([counts * (assign == c) for c in range(k)])
        centres = np.where(w.sum(1) > 0, (w * values).sum(1) / np.maximum(w.sum(1), 1), centres)
    return np.sort(centres)


def _names(value: Sequence[str] | str | None, known) -> list[str]:
    """``None`` -> all known names; a list, or a comma-separated string as a shell passes it."""
    if value is None:
        return list(known)
    return [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """Generator keyed by the seed and names, so results do not depend on build order."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


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
    coords = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    return np.exp(sum(c * rng.uniform(-strength, strength) + c * c * rng.uniform(-strength, strength) for c in coords))


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


# --------------------------------------------------------------------------------- slices & splits
def _split(lo: int, hi: int, chunks: int, gap: int, stride: int | None, target: int, fractions, rng):
    """Contiguous slabs: ``chunks`` equal blocks of [lo, hi] (the level bins), each cut into a training,
    validation and test slab (seeded order) with ``gap`` unused slices between any two slabs."""
    bounds = np.linspace(lo, hi + 1, chunks + 1)
    usable = hi - lo + 1 - (3 * chunks - 1) * gap
    stride = stride or max(1, round(usable / target))
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in range(chunks):
        a, b = int(np.ceil(bounds[c])) + (gap if c else 0), int(np.ceil(bounds[c + 1]))
        n = b - a - 2 * gap
        n_val, n_test = (max(1, round(f * n)) for f in fractions[1:])
        if n - n_val - n_test < 1:
            raise ValueError(f"slices {lo}-{hi} are too few for {chunks} block(s) of 3 slabs with gap={gap}.")
        for s in rng.permutation(3):
            length = (n - n_val - n_test, n_val, n_test)[s]
            out[SPLITS[s]] += range(a, a + length, stride)
            a += length + gap
    return {s: sorted(v) for s, v in out.items()}, bounds


def _resample(sl: np.ndarray, crop, spacing, size: int, smooth: bool = True):
    """Crop box -> square field of view (padding the short side) -> ``size`` x ``size`` pixels.

    Returns the slice and the 4x4 map from output pixel (u, v, 0) to source voxel (i, j, 0)."""
    x0, x1, y0, y1 = crop
    pixel = max((x1 - x0) * spacing[0], (y1 - y0) * spacing[1]) / size  # isotropic output spacing (mm)
    step = pixel / np.asarray(spacing)
    origin = np.array([(x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2]) - (size - 1) / 2 * step
    if smooth:  # anti-alias before downsampling
        sl = ndi.gaussian_filter(sl, np.maximum((step - 1) / 2, 0))
    grid = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = origin[:, None, None] + grid * step[:, None, None]
    out = ndi.map_coordinates(sl, coords, order=1, mode="constant", cval=0.0)
    index = np.eye(4)
    index[[0, 1], [0, 1]], index[:2, 3] = step, origin
    return out.astype(np.float32), index


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _slices(vol: _Volume, folder: Path, splits: dict, bounds, size: int) -> list[dict]:
    """Write every sampled slice (image, label) once; return one record per slice for the tasks."""
    spacing = np.linalg.norm(vol.affine[:3, :2], axis=0)
    records = []
    for split, zs in splits.items():
        for z in zs:
            stem = f"{vol.name}_z{z:03d}.nii.gz"
            image, index = _resample(vol.image[:, :, z], vol.crop, spacing, size)
            index[2, 3] = z
            affine = vol.affine @ index
            _save(np.clip(image, 0, 1), affine, folder / "images" / stem)
            rec: dict[str, Any] = {"split": split, "z": z, "image": f"images/{stem}", "area": {}}
            if vol.tissue is not None:
                gm, wm = (_resample(t[:, :, z], vol.crop, spacing, size)[0] for t in vol.tissue)
                label = np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0).astype(np.uint8)
                _save(label, affine, folder / "labels" / stem)
                rec["label"] = f"labels/{stem}"
                rec["area"] = {"grey matter": (label == 1).mean(), "white matter": (label == 2).mean()}
            if vol.bone is not None:
                bone, _ = _resample(vol.bone[:, :, z].astype(np.float32), vol.crop, spacing, size, False)
                rec["area"]["bone"] = (bone >= 0.5).mean()
            if vol.brain is not None:
                rec["level"] = int(np.clip(np.searchsorted(bounds, z, side="right") - 1, 0, len(LEVELS) - 1))
            records.append(rec)
    return records


# ------------------------------------------------------------------------------------------- tasks
def _prov(vol: _Volume, rec: dict, label: str | None) -> dict:
    return {"image": vol.image_kind, "label": label, "source": vol.source, "volume": vol.name,
            "slice_index": rec["z"]}  # fmt: skip


def _vqa_items(vol: _Volume, site: str, rec: dict) -> list[dict]:
    """Template questions answered from the label maps and the site's metadata."""
    yes_no = {True: "yes", False: "no"}
    qs = [("modality", "", SITES[site][1], None)]  # (template, tissue, answer, label source of the answer)
    if "level" in rec:
        qs += [("level", "", LEVELS[rec["level"]], vol.brain_source)]
    for tissue, area in rec["area"].items():
        source = "threshold" if tissue == "bone" else vol.tissue_source
        qs += [("presence", tissue, yes_no[area >= VISIBLE_FRACTION], source)]
    if vol.skull_stripped:  # brain-extracted template: no skull, known from metadata
        qs += [("presence", "bone", "no", None)]
    if vol.tissue is not None:
        qs += [
            ("size", "", yes_no[rec["area"]["grey matter"] > rec["area"]["white matter"]], vol.tissue_source)
        ]
    return [
        {"image": rec["image"], "question": QUESTIONS[qtype].format(tissue), "answer": answer,
         "label": VQA_ANSWERS.index(answer), "answer_type": "closed" if answer in yes_no.values() else "open",
         "question_type": qtype, "provenance": _prov(vol, rec, source)}
        for qtype, tissue, answer, source in qs
    ]  # fmt: skip


def _balance(items: list[dict], rng: np.random.Generator) -> list[dict]:
    """Per template, subsample every answer to the rarest one's count; drop templates with one answer.

    ``modality`` is constant within a site by construction and kept whole (it varies across sites)."""
    out = []
    for qtype in dict.fromkeys(i["question_type"] for i in items):
        group = [i for i in items if i["question_type"] == qtype]
        by_answer: dict[str, list[int]] = {}
        for n, item in enumerate(group):
            by_answer.setdefault(item["answer"], []).append(n)
        if qtype == "modality":
            keep = list(range(len(group)))
        elif len(by_answer) < 2:
            continue
        else:
            k = min(map(len, by_answer.values()))
            keep = [n for ns in by_answer.values() for n in rng.choice(ns, k, replace=False)]
        out += [group[n] for n in sorted(keep)]
    return out


def _task_items(vol: _Volume, site: str, task: str, records: list[dict], seed: int) -> dict[str, list[dict]]:
    items: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for rec in records:
        if task == "segmentation":
            item = {
                "image": rec["image"],
                "label": rec["label"],
                "provenance": _prov(vol, rec, vol.tissue_source),
            }
        elif task == "classification":
            item = {"image": rec["image"], "label": rec["level"], "class_name": LEVELS[rec["level"]],
                    "provenance": _prov(vol, rec, vol.brain_source)}  # fmt: skip
        elif task == "super_resolution":
            item = {"image": rec["image"], "provenance": _prov(vol, rec, None)}
        else:
            items[rec["split"]] += _vqa_items(vol, site, rec)
            continue
        items[rec["split"]].append(item)
    if task == "vqa":
        items = {s: _balance(v, _rng(seed, site, s)) for s, v in items.items()}
    return items


_DESCRIPTIONS = {
    "segmentation": "Axial slice -> grey/white matter label map (0 background, 1 GM, 2 WM).",
    "classification": "Axial level of the slice inside the brain's axial extent of its volume (4 equal bins).",
    "super_resolution": "High-resolution slice only; the low-resolution input is made by a transform at training time.",
    "vqa": "Template questions answered from label maps and metadata; answers balanced per template.",
}


def _task_meta(site: str, task: str, vol: _Volume) -> dict:
    meta = {"site": site, "modality": SITES[site][0], "task": task, "description": _DESCRIPTIONS[task],
            "image_provenance": vol.image_kind, "source": vol.source, "volume": vol.name}  # fmt: skip
    if task == "segmentation":
        meta.update(labels=SEG_LABELS, label_source=vol.tissue_source)
    elif task == "classification":
        meta.update(classes=list(LEVELS), label_source=vol.brain_source)
    elif task == "vqa":
        meta.update(answers=VQA_ANSWERS)
    return meta


# ------------------------------------------------------------------------------------------- build
def build_reference_sites(
    output_dir: PathLike,
    size: int = 128,
    seed: int = 0,
    sites: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    overwrite: bool = False,
    gap: int = 3,
    stride: int | None = None,
    slices_per_site: int = 96,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    noise: float = 0.03,
    ct_window: Sequence[float] = (40.0, 80.0),
    mricron_dir: PathLike = MRICRON_DIR,
    invesalius_file: PathLike = INVESALIUS_FILE,
) -> dict:
    """Build 2D reference sites from packaged images into ``output_dir`` (written atomically).

    Args:
        output_dir: created; must not exist or be empty unless ``overwrite``.
        size: output slices are ``size`` x ``size`` (square field of view, short side padded).
        seed: seeds slab order, simulated noise / bias and VQA balancing; same seed, same datalists.
        sites / tasks: subsets of :data:`SITES` / :data:`TASKS` (default all; comma-separated string ok).
        gap: unused slices between slabs of different splits (held-out slices are > ``gap`` from training).
        stride: keep every ``stride``-th slice of a slab; default about ``slices_per_site`` slices per volume.
        split_fractions: training / validation / test share of each block.
        noise: Rician noise sigma for simulated sites, as a fraction of the brightest tissue.
        ct_window: (level, width) in HU applied to CT before scaling to [0, 1]; default brain window.
        mricron_dir / invesalius_file: Debian package locations; missing -> those sites are skipped.

    Returns:
        the summary also written to ``sites.json``.
    """
    t0 = time.time()
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it.")
    sites, tasks = _names(sites, SITES), _names(tasks, TASKS)
    unknown = sorted(set(sites) - set(SITES)) + sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown site(s)/task(s) {unknown}; sites: {list(SITES)}, tasks: {list(TASKS)}.")
    if len(split_fractions) != 3 or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be 3 shares summing to 1, got {split_fractions}.")
    mricron, inv3 = Path(mricron_dir), Path(invesalius_file)
    debian = {"colin_t1": ("mricron-data", mricron / "ch2.nii.gz"), "head_ct": ("invesalius-examples", inv3)}
    debian |= {s: debian[base] for s, (base, *_) in SCANNERS.items() if base in debian}
    skipped = {s: f"Debian package {pkg} not found ({path} missing)" for s, (pkg, path) in debian.items()
               if s in sites and not path.is_file()}  # fmt: skip
    for site, reason in skipped.items():
        logger.warning("reference sites: skipping %s: %s", site, reason)
    loaders = {
        "icbm_t1": _icbm_t1,
        "colin_t1": lambda: _colin_t1(mricron),
        "head_ct": lambda: _head_ct(inv3, (float(ct_window[0]), float(ct_window[1]))),
        "epi_t2star": lambda: _real_sr("example4d_t0", "nibabel", ("tests", "data", "example4d.nii.gz"), 0),
        "dwi_b0": lambda: _real_sr("s0_10slices", "dipy", ("data", "files", "S0_10slices.nii.gz"), 0),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    summary: dict[str, Any] = {"size": size, "seed": seed, "gap": gap, "window": list(ct_window), "sites": {},
                               "skipped": skipped}  # fmt: skip
    try:
        cache: dict[str, _Volume] = {}
        vqa: dict[str, tuple[Path, dict, dict[str, list[dict]]]] = {}
        for site in (s for s in SITES if s in sites and s not in skipped):
            base = "icbm_t1" if site in SEQUENCES else SCANNERS[site][0] if site in SCANNERS else site
            if base not in cache:  # each source volume is loaded once for every site derived from it
                cache[base] = loaders[base]()
            vol = (_simulate(cache[base], site, seed, noise) if site in SEQUENCES
                   else _scanner(cache[base], site, seed) if site in SCANNERS else cache[base])  # fmt: skip
            chunks = len(LEVELS) if vol.brain is not None else 1
            lo, hi = _extent(vol.brain if vol.brain is not None else vol.image > 0.1)
            splits, bounds = _split(
                lo, hi, chunks, gap, stride, slices_per_site, split_fractions, _rng(seed, vol.name)
            )
            folder = tmp / site
            for sub in ("images", "labels") if vol.tissue is not None else ("images",):
                (folder / sub).mkdir(parents=True)
            records = _slices(vol, folder, splits, bounds, size)
            counts = {}
            for task in (t for t in SITES[site][2] if t in tasks):
                items = _task_items(vol, site, task, records, seed)
                if task == "vqa":  # written below, once every site's training questions are known
                    vqa[site] = (folder, _task_meta(site, task, vol), items)
                else:
                    with open(folder / f"{task}.json", "w") as f:
                        json.dump({**_task_meta(site, task, vol), **items}, f, indent=1)
                counts[task] = {s: len(v) for s, v in items.items()}
            summary["sites"][site] = {
                "modality": SITES[site][0], "package": vol.package, "source": vol.source, "volume": vol.name,
                "image": vol.image_kind, "segmentation_labels": vol.tissue_source, "level_labels": vol.brain_source,
                "extent": [lo, hi], "slices": {s: len(v) for s, v in splits.items()}, "tasks": counts,
            }  # fmt: skip
        # one vocabulary over every site's training questions, like the answers: federated sites share indices
        vocabulary = build_vocabulary(
            i["question"] for _, _, items in vqa.values() for i in items["training"]
        )
        for folder, meta, items in vqa.values():
            with open(folder / "vqa.json", "w") as f:
                json.dump({**meta, "vocabulary": vocabulary, **items}, f, indent=1)
        summary["packages_used"] = sorted({v["package"] for v in summary["sites"].values()})
        summary["build_seconds"] = round(time.time() - t0, 1)
        with open(tmp / "sites.json", "w") as f:
            json.dump(summary, f, indent=1)
        (tmp / "DATA_CARD.md").write_text(_data_card(summary))
        if out.exists():  # swap: old folder aside, new one in, old one removed
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.replace(old / out.name)
            tmp.replace(out)
            shutil.rmtree(old)
        else:
            tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["output_dir"] = str(out)
    return summary


_CARD = """# Reference sites: data card

Slices {size}x{size} px, seed {seed}. Images float32 in [0, 1], labels uint8, 2D NIfTI whose affine maps
pixels to the source volume's world space (resampled spacing included).

**Images**: `real` = acquired (ICBM152 and Colin27 are real T1 templates; the CT, EPI and b0 are scans).
`simulated-contrast` = T2w / PDw / FLAIR computed from the real ICBM grey/white-matter maps (CSF = brain
minus GM minus WM) with the spin-echo and inversion-recovery equations, BrainWeb 1.5 T tissue parameters
(T1 ms, T2 ms, PD) {tissue}, (TR, TE, TI) ms {sequences} (TI None: nulls CSF), plus Rician noise and a
smooth bias field. `simulated-scanner` = a real T1 (ICBM or Colin27) through a simulated scanner
(source, bias strength, gamma, blur FWHM voxels, noise) {scanners}: contrast curve, point-spread blur, bias
field and Rician noise; labels and split are the source volume's.

**Labels**: `template` = shipped with the template (ICBM GM/WM probability maps, argmax with background;
Colin27's `ch2bet` brain mask). `algorithmic` = Colin27 GM/WM by 3-class k-means of T1 intensities inside
`ch2bet`. `threshold` = CT: brain = largest 10-60 HU component, bone > {bone:.0f} HU. Level classes {levels}:
4 equal bins of the axial extent where the brain mask covers >= 10 % of its largest slice area. CT is
windowed (level, width) = {window} HU before scaling; its slices are gantry-tilted, so its levels are oblique.

**Split**: per volume, the extent is cut into one block per level (one block for sites without levels),
each block into contiguous training / validation / test slabs (seeded order) with {gap} unused slices between
any two slabs: every held-out slice is more than {gap} slices from every training slice. Sites built from
the same volume (icbm_*) share the split. VQA: per split and template, answers subsampled to equal counts;
templates with a single answer in a site are dropped, except `modality` (constant within a site).

| site | modality | image | source | seg labels | level labels | task | training | validation | test |
|---|---|---|---|---|---|---|---|---|---|
{rows}

**Packages used**: {used}

{skipped_lines}

**Licences**: {licences}
"""


def _data_card(summary: dict) -> str:
    rows = [
        f"| {site} | {s['modality']} | {s['image']} | `{s['source']}` | {s['segmentation_labels']} | "
        f"{s['level_labels']} | {task} | {c['training']} | {c['validation']} | {c['test']} |"
        for site, s in summary["sites"].items()
        for task, c in s["tasks"].items()
    ]
    skipped = [f"**Skipped**: {site}: {why}." for site, why in summary["skipped"].items()] or [
        "**Skipped**: none."
    ]
    return _CARD.format(
        **summary, tissue=TISSUE, sequences=SEQUENCES, scanners=SCANNERS, bone=CT_BONE_HU, levels=list(LEVELS), rows="\n".join(rows),
        used=", ".join(summary["packages_used"]) or "none", skipped_lines="\n".join(skipped),
        licences="; ".join(f"{p}: {lic}" for p, lic in LICENCES.items()),
    )  # fmt: skip
