"""Shared fixtures: the reference sites, and miniature files in each downloadable dataset's real on-disk format
(``dataset_files``, written by the tests, never committed)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from omnifm_monai.data import build_reference_sites


@pytest.fixture(scope="session")
def nvflare_job():
    """``federated/job.py``, the NVFlare job command (a script, not a package module); skips without NVFlare."""
    pytest.importorskip("nvflare", reason="NVFlare jobs need the `fl` extra: pip install -e '.[fl]'")
    spec = importlib.util.spec_from_file_location(
        "federated_job", Path(__file__).parents[1] / "federated" / "job.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def reference_sites(tmp_path_factory):
    """A small reference-site folder (two MR sites and the CT site when its package is installed)."""
    root = tmp_path_factory.mktemp("reference") / "sites"
    build_reference_sites(root, size=32, sites=["icbm_t1", "icbm_t2w", "head_ct"], slices_per_site=24)
    return root


@pytest.fixture(scope="session")
def reference_slices(reference_sites):
    """The real training slices of the reference sites, ``(N, 1, 32, 32)``, with each slice's site index."""
    import json

    import nibabel as nib
    import numpy as np
    import torch

    images, labels = [], []
    sites = sorted(p.name for p in reference_sites.iterdir() if (p / "classification.json").is_file())
    for index, site in enumerate(sites):
        datalist = json.loads((reference_sites / site / "classification.json").read_text())
        for item in datalist["training"]:
            data = np.asarray(nib.load(reference_sites / site / item["image"]).dataobj, dtype=np.float32)
            images.append(torch.from_numpy(data.squeeze())[None])
            labels.append(index)
    return torch.stack(images), torch.tensor(labels)


# ------------------------------------------------ miniature files in the paper's datasets' on-disk formats
RNG = np.random.default_rng(0)
MEDMNIST = (("organamnist", 28, (6, 3, 3)), ("organcmnist_64", 64, (5, 2, 4)))


def write_png(path: Path, shape: tuple[int, ...] = (12, 16, 3)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, shape, dtype=np.uint8)).save(path)


def write_nii(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def write_medmnist(root: Path, subsets=MEDMNIST, n_classes: int = 3) -> Path:
    """MedMNIST v2 files ``<flag>.npz`` / ``<flag>_<size>.npz`` (default: two grey-level subsets, 28 px and
    64 px) with ``{train,val,test}_{images,labels}``; labels ``(n, 1)`` uint8, cycling over the classes."""
    root.mkdir(parents=True, exist_ok=True)
    for name, size, n in subsets:
        arrays = {}
        for part, k in zip(("train", "val", "test"), n, strict=True):
            arrays[f"{part}_images"] = RNG.integers(0, 255, (k, size, size), dtype=np.uint8)
            arrays[f"{part}_labels"] = (np.arange(k) % n_classes).reshape(-1, 1).astype(np.uint8)
        np.savez(root / f"{name}.npz", **arrays)
    return root


def write_brats(root: Path, n_cases: int = 4, per_partition: int = 2) -> Path:
    """FeTS2022 case folders ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (8 x 8 x 6) and
    ``partitioning_1.csv`` (``per_partition`` cases per partition); returns the CSV."""
    cases = [f"FeTS2022_{i:05d}" for i in range(n_cases)]
    for case in cases:
        for seq in ("t1", "t1ce", "t2", "flair"):
            write_nii(root / case / f"{case}_{seq}.nii.gz", RNG.random((8, 8, 6)).astype(np.float32))
        seg = np.zeros((8, 8, 6), np.uint8)
        seg[2:4, 2:4, 2:4], seg[4:6, 4:6, 2:4], seg[5, 5, 3] = 2, 1, 4
        write_nii(root / case / f"{case}_seg.nii.gz", seg)
    with open(root / "partitioning_1.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["Partition_ID", "Subject_ID"], *[[1 + i // per_partition, c] for i, c in enumerate(cases)]]
        )
    return root / "partitioning_1.csv"


def write_breakhis(root: Path) -> Path:
    """BreaKHis v1 at 40X and 100X: 2 patients per class, one with two slide folders; returns its root."""
    slides = root / "BreaKHis_v1" / "histology_slides" / "breast"
    patients = {  # 2 patients per class; patient 14-21998 has two slide folders that must stay together
        "benign": [("adenosis", "SOB_B_A_14-22549AB"), ("fibroadenoma", "SOB_B_F_14-21998CD"), ("fibroadenoma", "SOB_B_F_14-21998EF")],
        "malignant": [("ductal_carcinoma", "SOB_M_DC_14-2523"), ("lobular_carcinoma", "SOB_M_LC_14-12204")],
    }  # fmt: skip
    for cls, folders in patients.items():
        for tumour, folder in folders:
            for mag in ("40X", "100X"):
                for k in range(2):
                    write_png(
                        slides / cls / "SOB" / tumour / folder / mag / f"{folder}-{mag[:-1]}-{k:03d}.png"
                    )
    return root / "BreaKHis_v1"


def write_vqa_rad(root: Path) -> tuple[Path, Path, list[dict]]:
    """VQA-RAD: ``VQA_RAD Dataset Public.json`` and its image folder (grey-level images); also the rows."""
    for k in range(4):
        write_png(root / "VQA_RAD Image Folder" / f"synpic{k}.jpg", (10, 10))
    rad = [
        {"qid": 1, "image_name": "synpic0.jpg", "question": "Is there a fracture?", "answer": "Yes", "answer_type": "CLOSED"},
        {"qid": 2, "image_name": "synpic0.jpg", "question": "How many lesions?", "answer": 2, "answer_type": "OPEN "},
        {"qid": 3, "image_name": "synpic1.jpg", "question": "Is this normal?", "answer": "no ", "answer_type": "closed"},
        {"qid": 4, "image_name": "synpic2.jpg", "question": "Is the heart enlarged?", "answer": "yes", "answer_type": "CLOSED"},
        {"qid": 5, "image_name": "synpic3.jpg", "question": "What organ?", "answer": "Liver", "answer_type": "OPEN"},
    ]  # fmt: skip
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rad))
    return root / "VQA_RAD Dataset Public.json", root / "VQA_RAD Image Folder", rad


SLAKE = [
    {"qid": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "Liver", "q_lang": "en", "answer_type": "OPEN", "modality": "CT", "content_type": "Organ"},
    {"qid": 2, "img_name": "xmlab1/source.jpg", "question": "哪个器官?", "answer": "肝脏", "q_lang": "zh", "answer_type": "OPEN", "modality": "CT"},
    {"qid": 3, "img_name": "xmlab2/source.jpg", "question": "Is it abnormal?", "answer": "Yes", "q_lang": "en", "answer_type": "CLOSED", "modality": "CT"},
    {"qid": 4, "img_name": "xmlab3/source.jpg", "question": "Is it a T2?", "answer": "No", "q_lang": "en", "answer_type": "CLOSED", "modality": "MRI"},
    {"qid": 5, "img_name": "xmlab4/source.jpg", "question": "Where is the lesion?", "answer": "Left Lung", "q_lang": "en", "answer_type": "OPEN", "modality": "X-Ray"},
]  # fmt: skip


def write_slake(root: Path) -> tuple[Path, Path]:
    """SLAKE, bilingual, as one JSON list (``all.json``) and its RGB image folder; returns both."""
    for k in range(1, 5):
        write_png(root / "Slake1.0" / "imgs" / f"xmlab{k}" / "source.jpg", (10, 10, 3))
    (root / "Slake1.0" / "all.json").write_text(json.dumps(SLAKE, ensure_ascii=False))
    return root / "Slake1.0" / "all.json", root / "Slake1.0" / "imgs"


def write_slake_release(root: Path) -> Path:
    """SLAKE's release folder ``root`` (``train.json``, ``validate.json``, ``test.json``, ``imgs/``): English
    CT and MRI questions with training items in each modality, a Chinese one, two questions on one image."""
    rows = [
        {"qid": q, "img_name": f"xmlab{1 if q == 2 else q}/source.jpg", "question": f"Is organ {q} normal?", "answer": "Yes" if q % 2 else "No",
         "q_lang": lang, "answer_type": "CLOSED", "modality": modality}
        for q, modality, lang in [(1, "CT", "en"), (2, "CT", "en"), (3, "CT", "zh"), (4, "MRI", "en"), (5, "MRI", "en"), (6, "CT", "en")]
    ]  # fmt: skip
    for r in rows:
        write_png(root / "imgs" / r["img_name"], (10, 10, 3))
    for name, part in (("train.json", rows[:5]), ("validate.json", []), ("test.json", rows[5:])):
        (root / name).write_text(json.dumps(part, ensure_ascii=False))
    return root


@pytest.fixture
def dataset_files() -> SimpleNamespace:
    """The writers above: ``dataset_files.medmnist(root)``, ``.brats``, ``.breakhis``, ``.vqa_rad``,
    ``.slake``, ``.slake_release``, ``.png``, ``.nii``."""
    pytest.importorskip("PIL.Image")
    return SimpleNamespace(
        png=write_png,
        nii=write_nii,
        medmnist=write_medmnist,
        brats=write_brats,
        breakhis=write_breakhis,
        vqa_rad=write_vqa_rad,
        slake=write_slake,
        slake_release=write_slake_release,
    )
