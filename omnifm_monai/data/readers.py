"""Readers for the paper's datasets, in the on-disk formats users download them in.

Every reader writes one datalist per site in the project's one layout (:mod:`omnifm_monai.data.layout`),
``<output_dir>/<site>/<task>.json``, the layout of the reference sites, so a bundle trains on a site with
``--dataset_dir <output_dir>/<site>`` and :func:`~omnifm_monai.data.layout.find_sites` lists the sites:

- :func:`read_medmnist` -> ``classification.json`` (metadata ``modality``, ``classes``);
- :func:`read_brats` (FeTS2022 / BraTS) -> ``segmentation.json`` (``modality``, ``labels``);
- :func:`read_breakhis` -> ``classification.json`` (``modality``, ``classes``) or ``super_resolution.json``;
- :func:`read_vqa_rad` / :func:`read_slake` (or both as one federation, :func:`read_vqa_sources`) ->
  ``vqa.json`` (``modality``, ``answers``, ``vocabulary``);
- :func:`read_nifti`, a user's folders in the Medical Segmentation Decathlon layout (``imagesTr`` /
  ``labelsTr``) -> ``segmentation.json`` (``modality``, ``labels``) or ``super_resolution.json``.

A datalist is the project's common form (``site``, ``task``, ``description`` and the metadata above, then
``training`` / ``validation`` / ``test`` lists whose paths are relative to the site folder, a
``provenance`` dict per item). Each reader returns a summary::

    {"dataset": ..., "task": ..., "output_dir": ...,
     "sites": {site: {"dataset_dir": folder, "datalist": path, "training": n, "validation": n, "test": n}}}

Images stay where the user keeps them, except MedMNIST arrays, which are written out as files.
Splits that the dataset does not ship are made by :func:`split_by_group` (deterministic for a seed,
whole patients / cases / images per split, so nothing leaks between splits).
"""

from __future__ import annotations

import csv
import json
import os
import re
import zipfile
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import PathLike
from monai.utils import optional_import

from omnifm_monai.transforms.text import build_vocabulary

from .layout import SPLITS, write_datalist

PILImage, has_pil = optional_import("PIL.Image")

__all__ = [
    "brats_cases",
    "nifti_cases",
    "read_brats",
    "read_breakhis",
    "read_medmnist",
    "read_nifti",
    "read_slake",
    "read_vqa_rad",
    "read_vqa_sources",
    "split_by_group",
]

BRATS_SEQUENCES = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = {"0": "background", "1": "necrotic tumour core", "2": "oedema", "4": "enhancing tumour"}
BREAKHIS_MAGNIFICATIONS = ("40X", "100X", "200X", "400X")
MEDMNIST_MODALITY = {
    "pathmnist": "pathology", "chestmnist": "X-ray", "dermamnist": "dermatoscopy", "octmnist": "OCT",
    "pneumoniamnist": "X-ray", "retinamnist": "fundus photography", "breastmnist": "ultrasound",
    "bloodmnist": "microscopy", "tissuemnist": "microscopy", "organamnist": "CT (axial)",
    "organcmnist": "CT (coronal)", "organsmnist": "CT (sagittal)", "organmnist3d": "CT",
    "nodulemnist3d": "CT", "adrenalmnist3d": "CT", "fracturemnist3d": "CT", "vesselmnist3d": "MRA",
    "synapsemnist3d": "electron microscopy",
}  # fmt: skip


# ----------------------------------------------------------------------------------------- helpers
def split_by_group(
    groups: Iterable[str],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    strata: Mapping[str, Hashable] | None = None,
) -> dict[str, str]:
    """Assign whole groups (patients, cases, images) to ``training`` / ``validation`` / ``test``.

    Deterministic for ``seed``. A non-zero fraction gets at least one group as long as one group stays
    in training. ``strata`` (group -> e.g. class) splits each stratum on its own to keep classes balanced.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need fractions >= 0 summing to < 1, got {val_fraction}, {test_fraction}.")
    by_stratum: dict[str, list[str]] = {}
    for g in sorted(set(groups)):
        by_stratum.setdefault(str((strata or {}).get(g, "")), []).append(g)
    rng, out = np.random.default_rng(seed), {}
    for key in sorted(by_stratum):
        members = [by_stratum[key][i] for i in rng.permutation(len(by_stratum[key]))]
        n = left = len(members)
        for split, frac in (("test", test_fraction), ("validation", val_fraction)):
            k = max(0, min(max(int(n * frac + 0.5), int(frac > 0)), left - 1))
            out.update({g: split for g in members[left - k : left]})
            left -= k
        out.update({g: "training" for g in members[:left]})
    return out


def _site_name(*parts: object) -> str:
    """Filesystem-safe lower-case site name, e.g. ``("slake", "X-Ray") -> "slake_x_ray"``."""
    return re.sub(r"[^a-z0-9]+", "_", "_".join(str(p) for p in parts).lower()).strip("_")


def _site_dir(output_dir: PathLike, site: str) -> Path:
    folder = Path(output_dir) / site
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _rel(path: PathLike, folder: Path) -> str:
    """Path relative to the datalist folder, what ``load_decathlon_datalist(base_dir=folder)`` resolves."""
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()


def _write_site(folder: Path, meta: Mapping[str, Any], items: Mapping[str, list[dict]]) -> dict:
    """Write the site's datalist for ``meta["task"]``, ``<folder>/<task>.json``; its line of the summary."""
    content = {"site": folder.name, **meta, **{s: items.get(s, []) for s in SPLITS}}
    path = write_datalist(folder, meta["task"], content)
    return {"dataset_dir": str(folder), "datalist": str(path), **{s: len(items.get(s, [])) for s in SPLITS}}


def _prov(label: str | None, source: str) -> dict:
    """Provenance of one item: every image these readers list is real, acquired data."""
    return {"image": "real", "label": label, "source": source}


def _load_json(path: PathLike) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None


def _load_questions(path: PathLike) -> list[dict]:
    """A VQA release file: a JSON list of question objects."""
    rows = _load_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a JSON list of question objects, got {type(rows).__name__}.")
    return rows


# ---------------------------------------------------------------------------------------- MedMNIST
def _class_names(names: Sequence[str] | Mapping[Any, str] | None, n_classes: int) -> list[str]:
    if names is None:
        return [f"class_{i}" for i in range(n_classes)]
    if isinstance(names, Mapping):  # MedMNIST's INFO[flag]["label"] style: {"0": "adrenal", ...}
        n_classes = max(n_classes, 1 + max(map(int, names), default=-1))
        names = [names.get(str(i), names.get(i, f"class_{i}")) for i in range(n_classes)]
    if len(names) < n_classes:
        raise ValueError(f"{len(names)} class names given but labels go up to {n_classes - 1}.")
    return list(names)


def _save_array(array: np.ndarray, stem: Path, image_format: str) -> Path:
    """Write one MedMNIST sample: 2D as PNG (or NIfTI), 3D volumes (D, H, W) always as NIfTI."""
    is_volume = array.ndim == 3 and array.shape[-1] != 3
    if is_volume or image_format == "nii.gz":
        if array.ndim == 3 and not is_volume:
            raise ValueError("RGB MedMNIST images can only be written as PNG (image_format='png').")
        path = stem.with_name(stem.name + ".nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array), np.eye(4)), path)
        return path
    if not has_pil:
        raise ImportError("writing MedMNIST images as PNG needs Pillow: pip install pillow.")
    path = stem.with_name(stem.name + ".png")
    PILImage.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)
    return path


def read_medmnist(
    sources: PathLike | Sequence[PathLike],
    output_dir: PathLike,
    class_names: Sequence[str] | Mapping[Any, Any] | None = None,
    image_format: str = "png",
    max_per_split: int | None = None,
    seed: int = 0,
) -> dict:
    """MedMNIST v2 ``<flag>.npz`` / ``<flag>_<size>.npz`` files (or a folder of them), one site per flag.

    Uses the shipped train/val/test splits; ``max_per_split`` keeps a seeded random subset of each.
    ``class_names``: a list, an index -> name mapping (MedMNIST's ``INFO[flag]["label"]``), or a
    flag -> either of those. Multi-label flags (e.g. chestmnist) are rejected.
    """
    if image_format not in ("png", "nii.gz"):
        raise ValueError(f"image_format must be 'png' or 'nii.gz', got {image_format!r}.")
    paths = [Path(sources)] if isinstance(sources, (str, os.PathLike)) else [Path(s) for s in sources]
    files = [f for p in paths for f in (sorted(p.glob("*.npz")) if p.is_dir() else [p])]
    if not files:
        raise FileNotFoundError(f"no MedMNIST .npz files in {[str(p) for p in paths]}.")
    rng, sites = np.random.default_rng(seed), {}
    for file in files:
        flag = re.fullmatch(r"(.+?)(?:_\d+)?", file.name[: -len(".npz")]).group(1)  # type: ignore[union-attr]
        if flag in sites:
            raise ValueError(f"{file}: a second file for MedMNIST flag {flag!r}; pass one size per flag.")
        parts = {"training": "train", "validation": "val", "test": "test"}
        try:
            npz = np.load(file)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an archive of named arrays")
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{file}: cannot read it as a NumPy .npz file ({e}).") from None
        with npz:  # images are read one split at a time: the 224px files are large
            missing = [
                f"{p}_{k}" for p in parts.values() for k in ("images", "labels") if f"{p}_{k}" not in npz
            ]
            if missing:
                raise ValueError(f"{file}: not a MedMNIST v2 file, missing arrays {missing}.")
            labels = {p: npz[f"{p}_labels"] for p in parts.values()}
            for p, lab in labels.items():
                if lab.ndim == 2 and lab.shape[1] > 1:
                    raise ValueError(
                        f"{file}: {p}_labels has shape {lab.shape}, a multi-label flag; "
                        "only single-label classification is supported."
                    )
            folder = _site_dir(output_dir, flag)
            (folder / "images").mkdir(exist_ok=True)
            items: dict[str, list[dict]] = {}
            for split, p in parts.items():
                images, lab = npz[f"{p}_images"], labels[p].reshape(-1)
                if len(images) != len(lab):
                    raise ValueError(f"{file}: {len(images)} {p}_images but {len(lab)} {p}_labels.")
                index = np.arange(len(lab))
                if max_per_split is not None and len(index) > max_per_split:
                    index = np.sort(rng.choice(index, max_per_split, replace=False))
                items[split] = []
                for i in index:
                    image = _save_array(images[i], folder / "images" / f"{p}_{i:06d}", image_format)
                    prov = _prov("MedMNIST v2", f"MedMNIST v2 {file.name} {p}[{i}]")
                    items[split].append(
                        {"image": _rel(image, folder), "label": int(lab[i]), "provenance": prov}
                    )
        names = class_names
        if isinstance(names, Mapping) and not all(str(k).isdigit() for k in names):  # keyed by flag
            names = names.get(flag)
        n_classes = 1 + max(int(lab.max(initial=0)) for lab in labels.values())
        meta = {
            "modality": MEDMNIST_MODALITY.get(flag.lower(), "unknown"),
            "task": "classification",
            "description": f"MedMNIST v2 {flag} ({file.name}), shipped train/val/test splits.",
            "classes": _class_names(names, n_classes),  # type: ignore[arg-type]
        }
        sites[flag] = _write_site(folder, meta, items)
    return {"dataset": "MedMNIST v2", "task": "classification", "output_dir": str(output_dir), "sites": sites}


# ---------------------------------------------------------------------------------- FeTS2022/BraTS
def _case_file(case_dir: Path, suffix: str) -> Path:
    for ext in (".nii.gz", ".nii"):
        if (path := case_dir / f"{case_dir.name}_{suffix}{ext}").is_file():
            return path
    raise FileNotFoundError(f"{case_dir}: missing {case_dir.name}_{suffix}.nii.gz.")


def read_brats(
    source_dir: PathLike,
    output_dir: PathLike,
    partition_csv: PathLike | None = None,
    modality: str | Mapping[str, str] = "flair",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    partitions: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """FeTS2022 / BraTS case folders ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, 3D segmentation.

    Sites are the partitions of ``partition_csv`` (columns ``Partition_ID, Subject_ID``; site name
    ``partition_<id>``), those of ``partitions`` (site name -> case folder names, used as given), or one
    site ``brats`` without either. ``modality`` is one sequence for every site, ``"all"`` (the four
    sequences as a list, loaded as channels), or a site (or partition id) -> sequence mapping for
    cross-modality; partitions it does not name are skipped. Label files keep BraTS values
    {0, 1, 2, 4}: the 3D segmentation bundle reads them with ``label_values: [0, 1, 2, 4]``.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"{source_dir}: folder not found.")
    for seq in [modality] if isinstance(modality, str) else modality.values():
        if seq not in (*BRATS_SEQUENCES, "all"):
            raise ValueError(f"modality must be one of {(*BRATS_SEQUENCES, 'all')}, got {seq!r}.")
    groups: dict[str, tuple[str, list[str]]] = {}  # site -> (partition id, cases)
    if partitions is not None:
        groups = {_site_name(site): (site, list(cases)) for site, cases in partitions.items()}
    elif partition_csv is not None:
        if not Path(partition_csv).is_file():
            raise FileNotFoundError(f"{partition_csv}: partitioning CSV not found.")
        with open(partition_csv, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: CSVs saved with a BOM
            for row in csv.DictReader(f):
                row = {str(k).strip(): str(v or "").strip() for k, v in row.items()}
                if "Partition_ID" not in row or "Subject_ID" not in row:
                    raise ValueError(
                        f"{partition_csv}: needs columns Partition_ID, Subject_ID, got {list(row)}."
                    )
                pid = row["Partition_ID"]
                groups.setdefault(_site_name("partition", pid), (pid, []))[1].append(row["Subject_ID"])
        if not groups:
            raise ValueError(f"{partition_csv}: no rows (expected Partition_ID, Subject_ID).")
    else:
        groups["brats"] = ("", brats_cases(source_dir))
    sites = {}
    for site, (pid, cases) in groups.items():
        seq = modality if isinstance(modality, str) else modality.get(site, modality.get(pid))
        if seq is None:
            continue
        folder, assign = _site_dir(output_dir, site), split_by_group(cases, val_fraction, test_fraction, seed)
        items: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for case in sorted(cases):
            images = [
                _rel(_case_file(source_dir / case, s), folder) for s in BRATS_SEQUENCES if seq in (s, "all")
            ]
            label = _rel(_case_file(source_dir / case, "seg"), folder)
            prov = _prov("BraTS expert annotation", f"FeTS2022/BraTS {case}")
            item = {"image": images if seq == "all" else images[0], "label": label, "provenance": prov}
            items[assign[case]].append(item)
        meta = {
            "modality": f"MRI {seq}",
            "task": "segmentation",
            "description": f"FeTS2022/BraTS {'partition ' + pid if pid else 'all cases'}, {seq}, 3D; "
            "label values {0,1,2,4} as on disk (the 3D bundle maps them with label_values); split by case.",
            "labels": BRATS_LABELS,
        }
        sites[site] = _write_site(folder, meta, items)
    return {
        "dataset": "FeTS2022/BraTS",
        "task": "segmentation",
        "output_dir": str(output_dir),
        "sites": sites,
    }


def brats_cases(source_dir: PathLike) -> list[str]:
    """The case folders of a BraTS / FeTS folder that have a label map (BraTS validation folders ship none)."""
    source_dir = Path(source_dir)
    cases = sorted(p.name for p in source_dir.iterdir() if p.is_dir() and any(p.glob(f"{p.name}_seg.nii*")))
    if not cases:
        raise FileNotFoundError(f"{source_dir}: no BraTS case folders (<case>/<case>_seg.nii.gz) in it.")
    return cases


# ---------------------------------------------------------------------------------------- BreaKHis
def read_breakhis(
    source_dir: PathLike,
    output_dir: PathLike,
    task: str = "classification",
    magnifications: Sequence[str] = BREAKHIS_MAGNIFICATIONS,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """BreaKHis ``.../<benign|malignant>/SOB/<type>/<patient>/<mag>/*.png``, one site per magnification.

    ``task``: ``"classification"`` (benign 0 / malignant 1) or ``"super_resolution"`` (image only).
    The split is by patient, stratified by class, and the same at every magnification.
    """
    if task not in ("classification", "super_resolution"):
        raise ValueError(f"task must be 'classification' or 'super_resolution', got {task!r}.")
    source_dir, mags = Path(source_dir), {m.upper() for m in magnifications}
    classes, records = ["benign", "malignant"], []
    for path in sorted(source_dir.rglob("*.png")):
        parts = path.relative_to(source_dir).parts
        i = parts.index("SOB") if "SOB" in parts else 0
        cls, mag = (parts[i - 1].lower(), parts[i + 3].upper()) if i and len(parts) == i + 5 else ("", "")
        if cls in classes and mag in mags:
            # folder "SOB_B_F_14-21998CD": one patient's slides differ in the letters, so group by "14-21998"
            m = re.search(r"\d+-\d+", parts[i + 2])
            records.append((cls, m.group(0) if m else parts[i + 2], mag, path))
    if not records:
        raise FileNotFoundError(
            f"no BreaKHis images (<benign|malignant>/SOB/<type>/<patient>/<mag>/*.png) in {source_dir}."
        )
    patient_class = {patient: cls for cls, patient, _, _ in records}
    assign = split_by_group(patient_class, val_fraction, test_fraction, seed, strata=patient_class)
    sites = {}
    for mag in sorted({r[2] for r in records}, key=lambda m: int(m[:-1])):
        folder, items = _site_dir(output_dir, _site_name("breakhis", mag)), {s: [] for s in SPLITS}
        for cls, patient, _, path in (r for r in records if r[2] == mag):
            is_cls, source = task == "classification", f"BreaKHis {path.relative_to(source_dir).as_posix()}"
            item = {"image": _rel(path, folder), **({"label": classes.index(cls)} if is_cls else {})}
            items[assign[patient]].append(
                {**item, "provenance": _prov("BreaKHis diagnosis" if is_cls else None, source)}
            )
        meta = {
            "modality": f"histopathology {mag}",
            "task": task,
            "description": f"BreaKHis {mag}, split by patient (stratified by class), seed {seed}.",
            **({"classes": classes} if task == "classification" else {}),
        }
        sites[folder.name] = _write_site(folder, meta, items)
    return {"dataset": "BreaKHis", "task": task, "output_dir": str(output_dir), "sites": sites}


# ------------------------------------------------------------------------------------ VQA-RAD/SLAKE
def _vqa_record(
    raw: Mapping[str, Any], image_key: str, image_dir: Path, dataset: str, source_file: PathLike = ""
) -> dict:
    where = f"{source_file or dataset}: question {raw.get('qid', '?')}"
    for key in (image_key, "question", "answer", "answer_type"):
        if raw.get(key) is None or str(raw[key]).strip() == "":
            raise ValueError(f"{where}: field {key!r} is missing or empty.")
    path = image_dir / str(raw[image_key])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image of {where} not found.")
    answer_type = str(raw.get("answer_type", "")).strip().lower()
    if answer_type not in ("closed", "open"):
        raise ValueError(f"{where}: answer_type must be CLOSED or OPEN, got {raw.get('answer_type')!r}.")
    return {
        "path": path,
        "image_name": str(raw[image_key]),
        "question": str(raw["question"]).strip(),
        "answer": str(raw["answer"]).strip().lower(),  # VQA-RAD mixes ints, case and trailing spaces
        "answer_type": answer_type,
        "question_type": str(raw.get("question_type") or raw.get("content_type") or "unknown").strip(),
        "modality": str(raw.get("modality", "radiology")),
        "source": f"{dataset} {raw[image_key]} question {raw.get('qid', '?')}",
        "official_test": str(raw.get("phrase_type", "")).startswith("test"),  # VQA-RAD's published test set
    }


def _vqa_item(r: dict, folder: Path, index: Mapping[str, int], dataset: str) -> dict:
    keys = ("question", "answer", "answer_type", "question_type")
    return {
        "image": _rel(r["path"], folder),
        **{k: r[k] for k in keys},
        "label": index[r["answer"]],
        "provenance": _prov(f"{dataset} annotation", r["source"]),
    }


def _write_vqa(
    dataset: str,
    sites: Mapping[str, Mapping[str, list[dict]]],
    output_dir: PathLike,
    answers: Iterable[Any] | None,
) -> dict:
    """Write VQA sites over one answer list, the union of every site's answers plus ``answers``, and one
    question vocabulary, built from every site's training questions (shared word indices)."""
    extra = {str(a).strip().lower() for a in answers or ()}
    answer_list = sorted(
        extra | {r["answer"] for splits in sites.values() for rs in splits.values() for r in rs}
    )
    vocabulary = build_vocabulary(
        r["question"] for splits in sites.values() for r in splits.get("training", [])
    )
    index, summary = {a: i for i, a in enumerate(answer_list)}, {}
    for site, splits in sites.items():
        folder = _site_dir(output_dir, site)
        items = {s: [_vqa_item(r, folder, index, dataset) for r in splits.get(s, [])] for s in SPLITS}
        meta = {
            "modality": ", ".join(sorted({r["modality"] for rs in splits.values() for r in rs})),
            "task": "vqa",
            "description": f"{dataset} ({site}), closed-set answers shared by all produced sites; split by image.",
            "answers": answer_list,
            "vocabulary": vocabulary,
        }
        summary[site] = _write_site(folder, meta, items)
    return {
        "dataset": dataset,
        "task": "vqa",
        "output_dir": str(output_dir),
        "sites": summary,
        "answers": answer_list,
        "vocabulary": vocabulary,
    }


def _split_records(
    records: list[dict], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[dict]]:
    assign = split_by_group((r["image_name"] for r in records), val_fraction, test_fraction, seed)
    return {s: [r for r in records if assign[r["image_name"]] == s] for s in SPLITS}


def read_vqa_rad(
    json_file: PathLike,
    image_dir: PathLike,
    output_dir: PathLike,
    site: str = "vqa_rad",
    answers: Iterable[Any] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    use_official_test: bool = True,
    seed: int = 0,
) -> dict:
    """VQA-RAD: a JSON list of ``image_name, question, answer, answer_type`` plus an image folder.

    With ``use_official_test`` and a ``phrase_type`` field, questions whose phrase type starts with
    ``test`` form the test split (as published: their images also appear in training); the rest is
    split by image. ``answers`` adds to the answer list (e.g. another dataset's, to share a label space).
    """
    sites = _vqa_rad_sites(json_file, image_dir, site, val_fraction, test_fraction, use_official_test, seed)
    return _write_vqa("VQA-RAD", sites, output_dir, answers)


def _vqa_rad_sites(json_file, image_dir, site, val_fraction, test_fraction, use_official_test, seed) -> dict:
    rows = _load_questions(json_file)
    records = [_vqa_record(r, "image_name", Path(image_dir), "VQA-RAD", json_file) for r in rows]
    if use_official_test and any(r["official_test"] for r in records):
        splits = _split_records([r for r in records if not r["official_test"]], val_fraction, 0.0, seed)
        splits["test"] = [r for r in records if r["official_test"]]
    else:
        splits = _split_records(records, val_fraction, test_fraction, seed)
    return {site: splits}


def read_slake(
    source: PathLike,
    image_dir: PathLike,
    output_dir: PathLike,
    site_by_modality: bool = True,
    answers: Iterable[Any] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """SLAKE, English questions only (``q_lang == "en"``).

    ``source`` is one JSON list (split by image here) or the release folder with ``train.json``,
    ``validate.json``, ``test.json`` (official splits). Sites are ``slake_<modality>`` or one ``slake``.
    """
    sites = _slake_sites(source, image_dir, site_by_modality, val_fraction, test_fraction, seed)
    return _write_vqa("SLAKE", sites, output_dir, answers)


def _slake_sites(source, image_dir, site_by_modality, val_fraction, test_fraction, seed) -> dict:
    source, image_dir = Path(source), Path(image_dir)
    if source.is_dir():
        names = dict(zip(SPLITS, ("train.json", "validate.json", "test.json"), strict=True))
        files = {s: source / n for s, n in names.items() if (source / n).is_file()}
        if "training" not in files:
            raise FileNotFoundError(f"{source}: no train.json (expected SLAKE's train/validate/test.json).")
    else:
        files = {"all": source}
    sites: dict[str, dict[str, list[dict]]] = {}
    for part, file in files.items():
        for r in _load_questions(file):
            if str(r.get("q_lang", "")).lower() != "en":  # SLAKE is bilingual: keep the English half
                continue
            if site_by_modality and not str(r.get("modality") or "").strip():
                raise ValueError(
                    f"{file}: question {r.get('qid', '?')}: field 'modality' is missing or empty."
                )
            site = _site_name("slake", r["modality"]) if site_by_modality else "slake"
            sites.setdefault(site, {}).setdefault(part, []).append(
                _vqa_record(r, "img_name", image_dir, "SLAKE", file)
            )
    if not sites:
        raise ValueError(f"{source}: no English (q_lang 'en') questions.")
    if "all" in files:
        sites = {s: _split_records(p["all"], val_fraction, test_fraction, seed) for s, p in sites.items()}
    return dict(sorted(sites.items()))


def read_vqa_sources(
    output_dir: PathLike,
    vqa_rad: tuple[PathLike, PathLike] | None = None,
    slake: tuple[PathLike, PathLike] | None = None,
    slake_by_modality: bool = False,
    answers: Iterable[Any] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """VQA-RAD ``(json_file, image_dir)`` and SLAKE ``(source, image_dir)`` as sites of one federation: one
    answer list and one question vocabulary over both (the paper's sites by source). Site ``vqa_rad`` and
    ``slake`` (or ``slake_<modality>`` with ``slake_by_modality``); each split as its own reader splits it."""
    sites: dict[str, dict[str, list[dict]]] = {}
    if vqa_rad is not None:
        sites.update(_vqa_rad_sites(*vqa_rad, "vqa_rad", val_fraction, test_fraction, True, seed))
    if slake is not None:
        sites.update(_slake_sites(*slake, slake_by_modality, val_fraction, test_fraction, seed))
    if not sites:
        raise ValueError("read_vqa_sources needs vqa_rad, slake or both.")
    return _write_vqa(
        "VQA-RAD + SLAKE" if vqa_rad and slake else "VQA-RAD" if vqa_rad else "SLAKE",
        sites,
        output_dir,
        answers,
    )


# ----------------------------------------------------------------------------- a folder of NIfTI files
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _nifti_files(folder: Path) -> dict[str, Path]:
    """``name -> file`` for the NIfTI files of ``folder`` (hidden files skipped: the Decathlon's tarballs
    carry macOS ``._<name>.nii.gz`` resource forks)."""
    files = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
        if suffix and path.is_file() and not path.name.startswith("."):
            files[path.name[: -len(suffix)]] = path
    return files


def nifti_cases(dataset_dir: PathLike) -> tuple[dict[str, list[Path]], dict[str, Path] | None, dict]:
    """The cases of a folder in the Medical Segmentation Decathlon layout: ``imagesTr/<case>.nii.gz`` and,
    optionally, ``labelsTr/<case>.nii.gz`` (same name) and ``dataset.json`` (its ``labels`` and ``modality``
    or ``channel_names``). Images named ``<case>_0000.nii.gz, <case>_0001.nii.gz, ...`` (nnU-Net's naming,
    when every image has such a suffix) are the channels of one case, labelled ``labelsTr/<case>.nii.gz``.

    Returns ``(case -> image files, case -> label file or None without labelsTr, dataset.json or {})``.
    """
    dataset_dir = Path(dataset_dir)
    images_dir, labels_dir = dataset_dir / "imagesTr", dataset_dir / "labelsTr"
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"{images_dir}: folder not found (expected the Medical Segmentation Decathlon layout "
            "imagesTr/<case>.nii.gz, optionally labelsTr/<case>.nii.gz)."
        )
    images = _nifti_files(images_dir)
    if not images:
        raise FileNotFoundError(f"{images_dir}: no .nii.gz or .nii files in it.")
    channels = all(re.fullmatch(r".+_\d{4}", name) for name in images)
    cases: dict[str, list[Path]] = {}
    for name, path in images.items():
        cases.setdefault(name[:-5] if channels else name, []).append(path)
    labels = None
    if labels_dir.is_dir():
        labels = _nifti_files(labels_dir)
        for case in cases:
            if case not in labels:
                raise FileNotFoundError(
                    f"{labels_dir / (case + '.nii.gz')}: label of {cases[case][0]} not found."
                )
        for case, path in labels.items():
            if case not in cases:
                raise FileNotFoundError(f"{path}: label without an image in {images_dir}.")
    meta = _load_json(dataset_dir / "dataset.json") if (dataset_dir / "dataset.json").is_file() else {}
    if not isinstance(meta, dict):
        raise ValueError(
            f"{dataset_dir / 'dataset.json'}: expected a JSON object, got {type(meta).__name__}."
        )
    return cases, labels, meta


def read_nifti(
    source_dirs: PathLike | Mapping[str, PathLike],
    output_dir: PathLike,
    task: str | None = None,
    modality: str | None = None,
    num_sites: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """Folders of NIfTI images in the Decathlon layout (:func:`nifti_cases`) as sites, split by case.

    ``source_dirs``: one folder (one site, named after it) or site name -> folder. With ``num_sites``, the
    cases of every folder are pooled and dealt at random (seeded) into ``site_1 ... site_<num_sites>``.
    ``task``: ``segmentation`` (needs ``labelsTr``) or ``super_resolution`` (images only); default
    segmentation when there are labels. ``modality``: the sites' modality tag; default ``dataset.json``'s
    ``modality`` / ``channel_names`` values, else ``unknown``. Label values: ``dataset.json``'s ``labels``.
    """
    folders = (
        {k: Path(v) for k, v in source_dirs.items()}
        if isinstance(source_dirs, Mapping)
        else {Path(source_dirs).resolve().name: Path(source_dirs)}
    )
    pooled: dict[str, tuple[list[Path], Path | None, str]] = {}  # "<site>/<case>" -> (images, label, site)
    metas, has_labels = {}, set()
    for site, folder in folders.items():
        cases, labels, metas[site] = nifti_cases(folder)
        has_labels.add(labels is not None)
        for case, files in cases.items():
            pooled[f"{site}/{case}"] = (files, labels[case] if labels else None, _site_name(site))
    task = task or ("segmentation" if has_labels == {True} else "super_resolution")
    if task not in ("segmentation", "super_resolution"):
        raise ValueError(
            f"task must be 'segmentation' or 'super_resolution' for NIfTI folders, got {task!r}."
        )
    if task == "segmentation" and False in has_labels:
        missing = [str(f / "labelsTr") for f in folders.values() if not (f / "labelsTr").is_dir()]
        raise FileNotFoundError(f"{missing[0]}: folder not found; segmentation needs a label per image.")
    if num_sites is not None:
        if isinstance(num_sites, bool) or not isinstance(num_sites, int) or not 1 <= num_sites <= len(pooled):
            raise ValueError(
                f"num_sites must be an integer in [1, {len(pooled)}] (the cases), got {num_sites!r}."
            )
        order = np.random.default_rng(seed).permutation(sorted(pooled))
        for k, key in enumerate(order):
            pooled[key] = (*pooled[key][:2], f"site_{1 + k % num_sites}")
    summary = {}
    for site in sorted({v[2] for v in pooled.values()}):
        keys = sorted(k for k, v in pooled.items() if v[2] == site)
        meta_in = [metas[k.split("/")[0]] for k in keys]
        # dataset.json: the Decathlon's {"0": "CT"} under "modality", nnU-Net v2's under "channel_names"
        fields = [m.get(k) for m in meta_in for k in ("modality", "channel_names")]
        tags = modality or ", ".join(
            sorted({str(v) for f in fields if isinstance(f, dict) for v in f.values()})
        )
        folder, assign = _site_dir(output_dir, site), split_by_group(keys, val_fraction, test_fraction, seed)
        items: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for key in keys:
            files, label, _ = pooled[key]
            image = [_rel(f, folder) for f in files] if len(files) > 1 else _rel(files[0], folder)
            item = {"image": image, **({"label": _rel(label, folder)} if task == "segmentation" else {})}
            source = f"NIfTI {key}"
            items[assign[key]].append(
                {**item, "provenance": _prov("user annotation" if task == "segmentation" else None, source)}
            )
        meta = {
            "modality": tags or "unknown",
            "task": task,
            "description": f"NIfTI folder(s) {sorted({k.split('/')[0] for k in keys})}, split by case, seed {seed}.",
        }
        labels_meta = next((m["labels"] for m in meta_in if isinstance(m.get("labels"), dict)), None)
        if task == "segmentation" and labels_meta is not None:
            meta["labels"] = labels_meta
        summary[site] = _write_site(folder, meta, items)
    return {"dataset": "NIfTI", "task": task, "output_dir": str(output_dir), "sites": summary}
