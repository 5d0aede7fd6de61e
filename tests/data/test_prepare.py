"""``python -m omnifm_monai.data prepare`` on miniature files in each dataset's real on-disk format."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from omnifm_monai.data.layout import SPLITS, datalist_path, find_sites
from omnifm_monai.data.prepare import MANIFEST, dirichlet_label_skew, prepare, prepare_command
from omnifm_monai.data.validation import check_datalist

REPO = Path(__file__).resolve().parents[2]


def _sites(output: Path, task: str) -> dict[str, dict]:
    """Every site's datalist; each passes the check the bundles run first (``check_datalist``)."""
    out = {}
    for site, folder in find_sites(output, task).items():
        path = str(datalist_path(folder, task))
        assert check_datalist(path, task, base_dir=folder) == path
        out[site] = json.loads(Path(path).read_text())
    return out


def _placements(sites: dict[str, dict], key=lambda item, folder: item["provenance"]["source"]) -> Counter:
    """(item key, site, split) for every listed item; the key must be unique across the whole output."""
    return Counter(
        (key(item, site), site, split) for site, d in sites.items() for split in SPLITS for item in d[split]
    )


def _once_each(placements: Counter, expected: set) -> dict:
    """Every expected item appears in exactly one site and one split; returns item -> (site, split)."""
    where = {}
    for (item, site, split), n in placements.items():
        assert n == 1 and item not in where, f"{item} listed more than once"
        where[item] = (site, split)
    assert set(where) == expected
    return where


def _image(output: Path, site: str, item: dict) -> Path:
    image = item["image"][0] if isinstance(item["image"], list) else item["image"]
    return (output / site / image).resolve()


def _medmnist_sources(root: Path) -> dict[str, str]:
    """The provenance source of every MedMNIST item -> its shipped split."""
    parts = {"train": "training", "val": "validation", "test": "test"}
    out = {}
    for file in sorted(root.glob("*.npz")):
        with np.load(file) as npz:
            for part, split in parts.items():
                out.update(
                    {f"MedMNIST v2 {file.name} {part}[{i}]": split for i in range(len(npz[f"{part}_labels"]))}
                )
    return out


def test_medmnist_one_subset_per_site_through_the_command(dataset_files, tmp_path):
    source = dataset_files.medmnist(tmp_path / "MedMNIST")
    out = tmp_path / "sites"
    run = subprocess.run(
        [sys.executable, "-m", "omnifm_monai.data", "prepare", "--format", "medmnist"]
        + ["--input", str(source), "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    sites = _sites(out, "classification")
    assert sorted(sites) == ["organamnist", "organcmnist"]
    where = _once_each(_placements(sites), set(_medmnist_sources(source)))
    for item, (site, split) in where.items():
        assert item.split()[2].split(".")[0].split("_")[0] == site  # one subset per site
        assert split == _medmnist_sources(source)[item]  # the shipped split
    for site, d in sites.items():  # the summary printed: each site and its split sizes
        assert any(
            line.split()[:4] == [site, *(str(len(d[s])) for s in SPLITS)] for line in run.stdout.splitlines()
        )
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "medmnist" and manifest["partition"] == "subset"
    assert {s: [v[k] for k in SPLITS] for s, v in manifest["sites"].items()} == {
        s: [len(d[k]) for k in SPLITS] for s, d in sites.items()
    }


def _class_proportions(labels: np.ndarray, site: np.ndarray, num_sites: int) -> np.ndarray:
    counts = np.stack([np.bincount(labels[site == k], minlength=labels.max() + 1) for k in range(num_sites)])
    return counts / counts.sum(1, keepdims=True)


def _skew(labels: np.ndarray, site: np.ndarray, num_sites: int) -> float:
    """Mean total-variation distance of the sites' class proportions from the pooled ones."""
    pooled = np.bincount(labels) / len(labels)
    return float(np.abs(_class_proportions(labels, site, num_sites) - pooled).sum(1).mean() / 2)


def test_dirichlet_label_skew():
    labels = np.repeat(np.arange(4), 150)
    splits = np.array(["training", "training", "training", "validation", "test"] * 120)
    a = dirichlet_label_skew(labels, splits, num_sites=5, alpha=0.3, seed=0)
    assert a.shape == labels.shape and set(a) == set(range(5))
    assert all((a[splits == "training"] == k).any() for k in range(5))
    np.testing.assert_array_equal(a, dirichlet_label_skew(labels, splits, 5, 0.3, seed=0))  # reproducible
    assert not np.array_equal(a, dirichlet_label_skew(labels, splits, 5, 0.3, seed=1))
    proportions = _class_proportions(labels, a, 5)
    assert not np.allclose(proportions, proportions[0])  # the sites' class proportions differ
    # a smaller alpha skews more; a large one approaches the pooled proportions
    iid = dirichlet_label_skew(labels, splits, 5, 1000.0, seed=0)
    assert _skew(labels, a, 5) > _skew(labels, iid, 5)
    # a site's held-out items follow its training class proportions (one draw per class, cut per split)
    train, held = splits == "training", splits != "training"
    for k in range(5):
        p_train = np.bincount(labels[train & (a == k)], minlength=4) / max(1, (train & (a == k)).sum())
        p_held = np.bincount(labels[held & (a == k)], minlength=4) / max(1, (held & (a == k)).sum())
        assert np.abs(p_train - p_held).sum() / 2 < _skew(labels, a, 5) + 0.25
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_label_skew(labels, splits, 5, 0.0)
    with pytest.raises(ValueError, match="num_sites"):
        dirichlet_label_skew(labels, splits, 1, 0.5)


def test_medmnist_dirichlet_partition(dataset_files, tmp_path):
    source = dataset_files.medmnist(
        tmp_path / "MedMNIST", subsets=(("pathmnist", 8, (90, 30, 30)),), n_classes=3
    )
    npz = np.load(source / "pathmnist.npz")

    def run(seed, output):
        prepare(
            "medmnist",
            source / "pathmnist.npz",
            output,
            partition="dirichlet",
            num_sites=3,
            alpha=0.3,
            seed=seed,
        )
        return _sites(output, "classification")

    sites = run(0, tmp_path / "a")
    assert sorted(sites) == ["pathmnist_site1", "pathmnist_site2", "pathmnist_site3"]
    where = _once_each(_placements(sites), set(_medmnist_sources(source)))
    assert all(split == _medmnist_sources(source)[item] for item, (_, split) in where.items())
    for d in sites.values():  # labels kept, one label space
        assert d["classes"] == ["class_0", "class_1", "class_2"]
        for split, part in zip(SPLITS, ("train", "val", "test"), strict=True):
            for item in d[split]:
                index = int(item["provenance"]["source"].rsplit("[", 1)[1][:-1])
                assert item["label"] == int(npz[f"{part}_labels"][index, 0])
    labels = np.array([i["label"] for d in sites.values() for s in SPLITS for i in d[s]])
    site = np.array([k for k, d in enumerate(sites.values()) for s in SPLITS for _ in d[s]])
    proportions = _class_proportions(labels, site, 3)
    assert not np.allclose(proportions, proportions[0])  # label skew
    # reproducible for a seed, different for another
    assert _placements(run(0, tmp_path / "b")) == _placements(sites)
    assert _placements(run(1, tmp_path / "c")) != _placements(sites)


def test_fets_institution_split(dataset_files, tmp_path):
    csv_file = dataset_files.brats(tmp_path / "FeTS", n_cases=6)
    prepare("fets", tmp_path / "FeTS", tmp_path / "sites")
    sites = _sites(tmp_path / "sites", "segmentation")
    with open(csv_file, newline="") as f:
        partition = {row["Subject_ID"]: f"partition_{row['Partition_ID']}" for row in csv.DictReader(f)}
    where = _once_each(_placements(sites, lambda item, site: Path(item["image"]).parent.name), set(partition))
    assert {case: site for case, (site, _) in where.items()} == partition  # the CSV's institution split
    for d in sites.values():
        assert d["modality"] == "MRI flair"
        assert all(
            i["image"].endswith("_flair.nii.gz") and i["label"].endswith("_seg.nii.gz")
            for s in SPLITS
            for i in d[s]
        )
    # the same sites for the whole-volume bundle
    prepare("fets", tmp_path / "FeTS", tmp_path / "volumes", task="segmentation_3d")
    volumes = _sites(tmp_path / "volumes", "segmentation_3d")
    assert {s: [i["image"] for k in SPLITS for i in d[k]] for s, d in volumes.items()} == {
        s: [i["image"] for k in SPLITS for i in d[k]] for s, d in sites.items()
    }
    assert all(d["task"] == "segmentation_3d" for d in volumes.values())
    assert not list((tmp_path / "volumes").glob("*/segmentation.json"))


def test_brats_one_sequence_per_site(dataset_files, tmp_path):
    dataset_files.brats(tmp_path / "BraTS", n_cases=8)
    prepare("brats", tmp_path / "BraTS", tmp_path / "sites", modality="t1,flair", seed=3)
    sites = _sites(tmp_path / "sites", "segmentation")
    assert sorted(sites) == ["brats_flair", "brats_t1"]
    cases = {p.name for p in (tmp_path / "BraTS").iterdir() if p.is_dir()}
    where = _once_each(_placements(sites, lambda item, site: Path(item["image"]).parent.name), cases)
    for case, (site, _) in where.items():  # disjoint cases, one sequence per site
        item = next(i for s in SPLITS for i in sites[site][s] if Path(i["image"]).parent.name == case)
        assert item["image"].endswith(f"_{site.removeprefix('brats_')}.nii.gz")
    assert [sum(len(d[s]) for s in SPLITS) for d in sites.values()] == [4, 4]


def test_breakhis_one_magnification_per_site(dataset_files, tmp_path):
    source = dataset_files.breakhis(tmp_path / "data")
    prepare("breakhis", source, tmp_path / "sites")
    sites = _sites(tmp_path / "sites", "super_resolution")  # the paper's task for BreaKHis
    assert sorted(sites) == ["breakhis_100x", "breakhis_40x"]
    images = {p.resolve() for p in source.rglob("*.png")}
    where = _once_each(_placements(sites, lambda item, site: _image(tmp_path / "sites", site, item)), images)
    for image, (site, _) in where.items():
        assert site == f"breakhis_{image.parent.name.lower()}"
    # label skew over the pooled magnifications, classification
    prepare(
        "breakhis",
        source,
        tmp_path / "skew",
        partition="dirichlet",
        task="classification",
        num_sites=2,
        alpha=1.0,
    )
    skew = _sites(tmp_path / "skew", "classification")
    where = _once_each(_placements(skew, lambda item, site: _image(tmp_path / "skew", site, item)), images)
    for site, d in skew.items():
        for item in (i for s in SPLITS for i in d[s]):
            assert d["classes"][item["label"]] in _image(tmp_path / "skew", site, item).parts
    # grey copies for the one-channel bundles: the same items, each image its source's luma
    from PIL import Image

    prepare("breakhis", source, tmp_path / "grey", grey=True)
    grey = find_sites(tmp_path / "grey", "super_resolution")
    for site, d in _sites(tmp_path / "grey", "super_resolution").items():
        assert [len(d[s]) for s in SPLITS] == [len(sites[site][s]) for s in SPLITS]
        check_datalist(
            str(datalist_path(grey[site], "super_resolution")), "super_resolution", expected_channels=1
        )
        for item in (i for s in SPLITS for i in d[s]):
            original = source / item["provenance"]["source"].removeprefix("BreaKHis ")
            expected = np.asarray(Image.open(original).convert("L"))
            np.testing.assert_array_equal(np.asarray(Image.open(Path(grey[site]) / item["image"])), expected)


def test_vqa_one_source_per_site_and_slake_by_modality(dataset_files, tmp_path):
    _, _, rad = dataset_files.vqa_rad(tmp_path / "VQA_RAD")
    slake = dataset_files.slake_release(tmp_path / "Slake1.0")
    prepare("vqa-rad,slake", f"{tmp_path / 'VQA_RAD'},{slake}", tmp_path / "sites")
    sites = _sites(tmp_path / "sites", "vqa")
    assert sorted(sites) == ["slake", "vqa_rad"]  # one source per site
    english = {f"SLAKE xmlab{1 if q == 2 else q}/source.jpg question {q}" for q in (1, 2, 4, 5, 6)}
    expected = english | {f"VQA-RAD {r['image_name']} question {r['qid']}" for r in rad}
    where = _once_each(_placements(sites), expected)
    assert all(
        site == ("slake" if item.startswith("SLAKE") else "vqa_rad") for item, (site, _) in where.items()
    )
    assert sites["slake"]["answers"] == sites["vqa_rad"]["answers"]  # one answer list for the federation
    assert sites["slake"]["vocabulary"] == sites["vqa_rad"]["vocabulary"]
    # SLAKE alone: one imaging modality per site
    prepare("slake", slake, tmp_path / "modality")
    by_modality = _sites(tmp_path / "modality", "vqa")
    assert {s: d["modality"] for s, d in by_modality.items()} == {"slake_ct": "CT", "slake_mri": "MRI"}
    _once_each(_placements(by_modality), english)
    # grey: one copy per image, shared by its questions
    prepare("slake", slake, tmp_path / "grey", grey=True)
    d = _sites(tmp_path / "grey", "vqa")["slake_ct"]
    copies = {}
    for item in (i for s in SPLITS for i in d[s]):
        copies.setdefault(item["provenance"]["source"].split()[1], set()).add(item["image"])
    assert len(copies["xmlab1/source.jpg"]) == 1 and len(copies) == 2  # questions 1, 2 share their image
    assert len(set.union(*copies.values())) == 2 and all(
        p.startswith("grey/") for p in set.union(*copies.values())
    )
    check_datalist(str(tmp_path / "grey" / "slake_ct" / "vqa.json"), "vqa", expected_channels=1)


def test_nifti_decathlon_folders(dataset_files, tmp_path):
    rng = np.random.default_rng(0)
    for site, channels in (("HospitalA", 1), ("HospitalB", 2)):
        for k in range(5):
            for c in range(
                channels
            ):  # HospitalB: nnU-Net's naming, <case>_0000, <case>_0001 are one case's channels
                name = f"case_{k:03d}_{c:04d}" if channels > 1 else f"case_{k:03d}"
                dataset_files.nii(
                    tmp_path / "data" / site / "imagesTr" / f"{name}.nii.gz",
                    rng.random((8, 8, 4)).astype(np.float32),
                )
            label = (rng.random((8, 8, 4)) > 0.5).astype(np.uint8)
            dataset_files.nii(tmp_path / "data" / site / "labelsTr" / f"case_{k:03d}.nii.gz", label)
        info = {
            "labels": {"0": "background", "1": "lesion"},
            "modality": {str(c): "MRI" for c in range(channels)},
        }
        (tmp_path / "data" / site / "dataset.json").write_text(json.dumps(info))
    (tmp_path / "data" / "HospitalA" / "imagesTr" / "._case_000.nii.gz").write_bytes(
        b"\0"
    )  # a tarball's macOS fork
    prepare("nifti", tmp_path / "data", tmp_path / "sites")
    sites = _sites(tmp_path / "sites", "segmentation")
    assert sorted(sites) == ["hospitala", "hospitalb"]
    assert sites["hospitala"]["labels"] == {"0": "background", "1": "lesion"}
    cases = {f"{s}/case_{k:03d}" for s in ("HospitalA", "HospitalB") for k in range(5)}
    where = _once_each(
        _placements(sites, lambda item, site: item["provenance"]["source"].removeprefix("NIfTI ")), cases
    )
    assert all(site == case.split("/")[0].lower() for case, (site, _) in where.items())  # one site per folder
    assert all(len(i["image"]) == 2 for s in SPLITS for i in sites["hospitalb"][s])
    # the cases dealt at random into 3 sites
    prepare("nifti", tmp_path / "data", tmp_path / "random", partition="random", num_sites=3)
    dealt = _sites(tmp_path / "random", "segmentation")
    assert sorted(dealt) == ["site_1", "site_2", "site_3"]
    _once_each(
        _placements(dealt, lambda item, site: item["provenance"]["source"].removeprefix("NIfTI ")), cases
    )


# ------------------------------------------------------------------------------------------ bad input
def _bad_npz(root: Path, dataset_files) -> Path:
    dataset_files.medmnist(root)
    arrays = dict(np.load(root / "organamnist.npz"))
    del arrays["test_labels"]
    np.savez(root / "organamnist.npz", **arrays)
    return root / "organamnist.npz"


def _corrupt_npz(root: Path, dataset_files) -> Path:
    dataset_files.medmnist(root)
    (root / "organcmnist_64.npz").write_bytes(b"PK\x03\x04 truncated")
    return root / "organcmnist_64.npz"


def _vqa_rad_field(root: Path, dataset_files, field: str, value) -> Path:
    json_file, _, rad = dataset_files.vqa_rad(root)
    rad[2][field] = value
    json_file.write_text(json.dumps(rad))
    return json_file


def _bad_json(root: Path, dataset_files) -> Path:
    json_file, _, _ = dataset_files.vqa_rad(root)
    json_file.write_text(json_file.read_text()[:-10])
    return json_file


def _unreadable_png(root: Path, dataset_files) -> Path:
    source = dataset_files.breakhis(root)
    png = sorted(source.rglob("*.png"))[3]
    png.write_bytes(png.read_bytes()[:40])
    return png


def _truncated_nifti(root: Path, dataset_files) -> Path:
    for k in range(3):
        dataset_files.nii(root / "imagesTr" / f"case_{k}.nii.gz", np.ones((8, 8, 4), np.float32))
        dataset_files.nii(root / "labelsTr" / f"case_{k}.nii.gz", np.zeros((8, 8, 4), np.uint8))
    path = root / "imagesTr" / "case_1.nii.gz"
    path.write_bytes(path.read_bytes()[:60])
    return path


def _missing_label(root: Path, dataset_files) -> Path:
    _truncated_nifti(root, dataset_files)
    (root / "labelsTr" / "case_2.nii.gz").unlink()
    return root / "labelsTr" / "case_2.nii.gz"


def _missing_case(root: Path, dataset_files) -> Path:
    csv_file = dataset_files.brats(root)
    with open(csv_file, "a", newline="") as f:
        csv.writer(f).writerow([2, "FeTS2022_00099"])
    return root / "FeTS2022_00099"


BAD = {  # format, the input folder below the test's, the writer that breaks one file and returns it
    "missing input folder": ("medmnist", "nowhere", lambda root, files: root),
    "npz without test_labels": ("medmnist", "in", _bad_npz),
    "corrupt npz": ("medmnist", "in", _corrupt_npz),
    "missing question field": ("vqa-rad", "in", lambda r, f: _vqa_rad_field(r, f, "question", None)),
    "bad answer_type": ("vqa-rad", "in", lambda r, f: _vqa_rad_field(r, f, "answer_type", "MAYBE")),
    "malformed JSON": ("vqa-rad", "in", _bad_json),
    "unreadable PNG": ("breakhis", "in", _unreadable_png),
    "truncated NIfTI": ("nifti", "in", _truncated_nifti),
    "missing label": ("nifti", "in", _missing_label),
    "missing partitioning CSV": (
        "fets",
        "in",
        lambda r, f: (f.brats(r).unlink(), r / "partitioning_1.csv")[1],
    ),
    "case in the CSV without a folder": ("fets", "in", _missing_case),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_written(case, dataset_files, tmp_path, capsys):
    fmt, folder, writer = BAD[case]
    bad_file = writer(tmp_path / folder, dataset_files)
    with pytest.raises(SystemExit) as err:
        prepare_command(format=fmt, input=str(tmp_path / folder), output=str(tmp_path / "sites"))
    message = str(err.value.code)
    assert message.startswith(f"error: {bad_file}: ") and "\n" not in message, message
    assert not (tmp_path / "sites").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sites")]  # nothing half-written
    assert capsys.readouterr().out == ""


def test_the_command_exits_1_and_keeps_an_earlier_output(dataset_files, tmp_path):
    source = dataset_files.medmnist(tmp_path / "MedMNIST")
    out = tmp_path / "sites"
    prepare("medmnist", source, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (source / "organamnist.npz").write_bytes(b"not an archive")
    cmd = [
        sys.executable,
        "-m",
        "omnifm_monai.data",
        "prepare",
        "--format",
        "medmnist",
        "--input",
        str(source),
    ]
    run = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {source / 'organamnist.npz'}: ")
    assert {
        p: p.read_bytes() for p in out.rglob("*") if p.is_file()
    } == before  # the earlier output as it was
    # a misspelt flag is refused before anything runs (Fire would run the command, then fail on it)
    run = subprocess.run(
        [*cmd, "--output", str(tmp_path / "new"), "--partiton", "dirichlet"], capture_output=True, text=True
    )
    assert run.returncode == 1 and "--partiton" in run.stderr and not (tmp_path / "new").exists()
    # a folder prepare did not write is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match=f"{tmp_path / 'mine'}: exists"):
        prepare("medmnist", source, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="partition"):
        prepare("medmnist", source, tmp_path / "x", partition="magnification")
    with pytest.raises(ValueError, match="--task for medmnist"):
        prepare("medmnist", source, tmp_path / "x", task="segmentation")
    with pytest.raises(ValueError, match="--task classification"):
        prepare("breakhis", source, tmp_path / "x", partition="dirichlet")
    with pytest.raises(ValueError, match="one label space|one MedMNIST subset"):
        prepare("medmnist", dataset_files.medmnist(tmp_path / "two"), tmp_path / "x", partition="dirichlet")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_prepared_medmnist_federates_in_the_simulator(dataset_files, tmp_path):
    """A miniature MedMNIST (two subsets, 28 px) prepared, then one round of OmniFM over its two sites."""
    from omnifm_monai.fl import simulate

    subsets = (("organamnist", 28, (12, 4, 4)), ("organcmnist", 28, (12, 4, 4)))
    prepare("medmnist", dataset_files.medmnist(tmp_path / "MedMNIST", subsets=subsets), tmp_path / "sites")
    modalities = sorted(d["modality"] for d in _sites(tmp_path / "sites", "classification").values())
    results = simulate(
        str(REPO / "bundles" / "omnifm_classification"),
        "omnifm",
        rounds=1,
        output=str(tmp_path / "run"),
        reference_dir=str(tmp_path / "sites"),
        overrides={"image_size": 28, "batch_size": 4, "modalities": modalities},
        figures=False,
    )
    assert set(results) == {"organamnist", "organcmnist"}
    assert all(math.isfinite(m["val_accuracy"]) for m in results.values())
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["site"] for r in rows if r["split"] == "test"} == {"organamnist", "organcmnist"}
