"""Readers on tiny fixtures written in each dataset's exact on-disk format (generated here, never committed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

from omnifm_monai.data.layout import datalist_path, find_sites
from omnifm_monai.data.readers import (
    SPLITS,
    read_brats,
    read_breakhis,
    read_medmnist,
    read_slake,
    read_vqa_rad,
    split_by_group,
)
from omnifm_monai.data.validation import check_datalist, validate_datalist
from omnifm_monai.transforms import PAD, UNKNOWN, words

pytest.importorskip("PIL.Image")
RNG = np.random.default_rng(0)
BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
BUNDLE = {
    "classification": "omnifm_classification",
    "segmentation": "omnifm_segmentation",
    "super_resolution": "omnifm_super_resolution",
    "vqa": "omnifm_vqa",
}


def _load_all(summary: dict, segmentation: bool = False) -> dict[str, dict[str, list[dict]]]:
    """Every datalist resolves with load_decathlon_datalist and every path loads with LoadImage."""
    loader, out = LoadImage(image_only=True), {}
    for site, info in summary["sites"].items():
        folder = Path(info["datalist"]).parent
        # load_decathlon_datalist fails on an empty "test" list (monai 1.6.1 reads item [0]): skip empty ones
        out[site] = {
            s: load_decathlon_datalist(info["datalist"], segmentation, s, folder) if info[s] else []
            for s in SPLITS
        }
        for item in (i for s in SPLITS for i in out[site][s]):
            assert loader(item["image"]).numel() > 0
            assert item["provenance"]["image"] == "real"
            if segmentation:
                assert loader(item["label"]).numel() > 0
    return out


def _as_a_bundle_reads_it(summary: dict, channels: int | dict[str, int]) -> None:
    """The reader's sites are the ``find_sites`` of its output folder for its task, and each one is a
    ``dataset_dir`` the task's bundle reads: its ``datalist`` id resolves to the written file, which passes
    ``check_datalist`` as the bundle's ``initialize`` calls it (``expected_channels``: the bundles' 1, or an
    RGB dataset's 3, for which ``in_channels`` is overridden), and the metadata ids it reads resolve."""
    task = summary["task"]
    sites = find_sites(summary["output_dir"], task)
    assert list(sites) == sorted(sites)
    assert sites == {site: info["dataset_dir"] for site, info in summary["sites"].items()}
    for site, site_dir in sites.items():
        parser = ConfigParser()
        parser.read_config(str(BUNDLES / BUNDLE[task] / "configs" / "train.json"))
        parser["dataset_dir"] = site_dir
        path = parser.get_parsed_content("datalist")
        assert path == str(datalist_path(site_dir, task)) == summary["sites"][site]["datalist"]
        n = channels if isinstance(channels, int) else channels[site]
        assert check_datalist(path, task, base_dir=site_dir, expected_channels=n) == path
        meta = parser.get_parsed_content("datalist_meta")
        assert meta["site"] == site and meta["task"] == task and isinstance(meta["modality"], str)
        if task == "classification":
            assert parser.get_parsed_content("class_names") == meta["classes"]
        elif task == "segmentation":
            assert {int(v) for v in meta["labels"]} >= {0}
        elif task == "vqa":
            assert parser.get_parsed_content("answers") == meta["answers"] == summary["answers"]
            assert parser.get_parsed_content("vocabulary") == meta["vocabulary"] == summary["vocabulary"]


def test_split_by_group_deterministic_and_disjoint():
    groups = [f"p{i}" for i in range(20)]
    a, b = split_by_group(groups, 0.1, 0.2, seed=3), split_by_group(reversed(groups), 0.1, 0.2, seed=3)
    assert a == b and sorted(a) == sorted(groups)
    assert [list(a.values()).count(s) for s in SPLITS] == [14, 2, 4]
    assert split_by_group(["only"], 0.1, 0.2) == {"only": "training"}  # training is never emptied
    with pytest.raises(ValueError):
        split_by_group(groups, 0.5, 0.5)


def test_medmnist(dataset_files, tmp_path):
    dataset_files.medmnist(tmp_path)
    names = {"organamnist": {"0": "bladder", "1": "femur-left", "2": "femur-right"}}
    summary = read_medmnist(tmp_path, tmp_path / "out", class_names=names)
    assert summary["sites"]["organamnist"] | {"datalist": 0} == {
        "dataset_dir": str(tmp_path / "out" / "organamnist"),
        "datalist": 0,
        "training": 6,
        "validation": 3,
        "test": 3,
    }
    site_dir = tmp_path / "out" / "organamnist"
    assert summary["sites"]["organamnist"]["datalist"] == str(site_dir / "classification.json")
    assert [summary["sites"]["organcmnist"][s] for s in SPLITS] == [5, 2, 4]
    dl = json.loads(Path(summary["sites"]["organamnist"]["datalist"]).read_text())
    assert dl["classes"] == ["bladder", "femur-left", "femur-right"] and dl["modality"] == "CT (axial)"
    assert json.loads(Path(summary["sites"]["organcmnist"]["datalist"]).read_text())["classes"] == [
        "class_0", "class_1", "class_2"
    ]  # fmt: skip
    loaded = _load_all(summary)
    assert [i["label"] for i in loaded["organamnist"]["training"]] == [0, 1, 2, 0, 1, 2]
    first = LoadImage(image_only=True)(loaded["organcmnist"]["test"][0]["image"])
    assert first.shape == (64, 64)
    npz = np.load(tmp_path / "organcmnist_64.npz")
    np.testing.assert_array_equal(first.numpy().T, npz["test_images"][0])  # PIL reader returns (W, H)
    # seeded subsampling
    sub = read_medmnist(tmp_path / "organamnist.npz", tmp_path / "sub", max_per_split=2, seed=1)
    assert [sub["sites"]["organamnist"][s] for s in SPLITS] == [2, 2, 2]


def test_medmnist_rgb_volume_and_multilabel(tmp_path):
    def write(name, images, labels):
        np.savez(
            tmp_path / name,
            **{
                f"{p}_{k}": v
                for p in ("train", "val", "test")
                for k, v in (("images", images), ("labels", labels))
            },
        )

    write("bloodmnist.npz", RNG.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8), np.array([[0], [1]]))
    write("nodulemnist3d.npz", RNG.integers(0, 255, (2, 6, 6, 6), dtype=np.uint8), np.array([[0], [1]]))
    summary = read_medmnist([tmp_path / "bloodmnist.npz", tmp_path / "nodulemnist3d.npz"], tmp_path / "out")
    loaded = _load_all(summary)
    _as_a_bundle_reads_it(summary, {"bloodmnist": 3, "nodulemnist3d": 1})
    assert (
        LoadImage(image_only=True, ensure_channel_first=True)(
            loaded["bloodmnist"]["training"][0]["image"]
        ).shape[0]
        == 3
    )
    assert loaded["nodulemnist3d"]["training"][0]["image"].endswith(".nii.gz")
    write("chestmnist.npz", RNG.integers(0, 255, (2, 8, 8), dtype=np.uint8), np.zeros((2, 14)))
    with pytest.raises(ValueError, match="multi-label"):
        read_medmnist(tmp_path / "chestmnist.npz", tmp_path / "out")


def test_medmnist_writes_classification_sites(dataset_files, tmp_path):
    summary = read_medmnist(dataset_files.medmnist(tmp_path / "MedMNIST"), tmp_path / "out")
    assert summary["output_dir"] == str(tmp_path / "out") and summary["task"] == "classification"
    assert sorted(summary["sites"]) == ["organamnist", "organcmnist"]
    _as_a_bundle_reads_it(summary, channels=1)


def test_brats(dataset_files, tmp_path):
    csv_file = dataset_files.brats(tmp_path / "FeTS")
    summary = read_brats(tmp_path / "FeTS", tmp_path / "out", csv_file, modality="t1ce", seed=0)
    assert sorted(summary["sites"]) == ["partition_1", "partition_2"]
    for info in summary["sites"].values():  # 2 cases: one trains, one tests (a fraction > 0 gets one)
        assert [info[s] for s in SPLITS] == [1, 0, 1]
    loaded = _load_all(summary, segmentation=True)
    item = loaded["partition_1"]["training"][0]
    assert item["image"].endswith("_t1ce.nii.gz") and item["label"].endswith("_seg.nii.gz")
    cases = {Path(i["image"]).parent.name for s in SPLITS for i in loaded["partition_1"][s]}
    assert cases == {"FeTS2022_00000", "FeTS2022_00001"}
    dl = json.loads(Path(summary["sites"]["partition_1"]["datalist"]).read_text())
    assert dl["task"] == "segmentation" and set(dl["labels"]) == {"0", "1", "2", "4"}
    # cross-modality: one sequence per site, by site name or partition id
    cross = read_brats(
        tmp_path / "FeTS", tmp_path / "cross", csv_file, modality={"partition_1": "t1", "2": "flair"}
    )
    seqs = {s: json.loads(Path(i["datalist"]).read_text())["modality"] for s, i in cross["sites"].items()}
    assert seqs == {"partition_1": "MRI t1", "partition_2": "MRI flair"}
    # all four sequences as channels (the label map {0,1,2,4}: tests/transforms/test_convert_brats_labels.py)
    multi = read_brats(tmp_path / "FeTS", tmp_path / "all", modality="all")
    item = _load_all(multi, segmentation=True)["brats"]["training"][0]
    data = LoadImage(image_only=True, ensure_channel_first=True)
    assert data(item["image"]).shape == (4, 8, 8, 6)
    _as_a_bundle_reads_it(multi, channels=4)


def test_brats_writes_segmentation_sites(dataset_files, tmp_path):
    csv_file = dataset_files.brats(tmp_path / "FeTS")
    summary = read_brats(tmp_path / "FeTS", tmp_path / "out", csv_file, modality="t1ce")
    assert summary["output_dir"] == str(tmp_path / "out") and summary["task"] == "segmentation"
    assert sorted(summary["sites"]) == ["partition_1", "partition_2"]
    _as_a_bundle_reads_it(summary, channels=1)


def test_breakhis(dataset_files, tmp_path):
    dataset_files.breakhis(tmp_path)
    summary = read_breakhis(tmp_path / "BreaKHis_v1", tmp_path / "out", seed=0)
    assert sorted(summary["sites"]) == ["breakhis_100x", "breakhis_40x"]
    loaded = _load_all(summary)
    for site, splits in loaded.items():
        patient = {s: {i["image"].split("/")[-3].split("_")[-1][:8] for i in splits[s]} for s in SPLITS}
        assert not (patient["training"] & patient["test"]) and not patient["validation"]
        labels = {s: sorted({i["label"] for i in splits[s]}) for s in SPLITS}
        assert labels["training"] == labels["test"] == [0, 1]  # stratified by class
        assert sum(summary["sites"][site][s] for s in SPLITS) == 10
    assert {i["image"].split("/")[-3] for i in loaded["breakhis_40x"]["training"]} in (
        {"SOB_B_A_14-22549AB", "SOB_M_DC_14-2523"}, {"SOB_B_A_14-22549AB", "SOB_M_LC_14-12204"},
        {"SOB_B_F_14-21998CD", "SOB_B_F_14-21998EF", "SOB_M_DC_14-2523"},
        {"SOB_B_F_14-21998CD", "SOB_B_F_14-21998EF", "SOB_M_LC_14-12204"},
    )  # fmt: skip
    sr = read_breakhis(
        tmp_path / "BreaKHis_v1", tmp_path / "sr", task="super_resolution", magnifications=["40X"]
    )
    dl = json.loads(Path(sr["sites"]["breakhis_40x"]["datalist"]).read_text())
    assert dl["task"] == "super_resolution" and "classes" not in dl
    assert all("label" not in i and i["provenance"]["label"] is None for i in dl["training"])
    validate_datalist(sr["sites"]["breakhis_40x"]["datalist"], "super_resolution")


def test_breakhis_writes_classification_and_super_resolution_sites(dataset_files, tmp_path):
    """Both tasks read into one folder: each site folder holds one datalist per task, like a reference site."""
    source = dataset_files.breakhis(tmp_path / "data")
    classification = read_breakhis(source, tmp_path / "out")
    super_resolution = read_breakhis(source, tmp_path / "out", task="super_resolution")
    for summary in (classification, super_resolution):
        assert sorted(summary["sites"]) == ["breakhis_100x", "breakhis_40x"]
        _as_a_bundle_reads_it(summary, channels=3)
    for site in ("breakhis_100x", "breakhis_40x"):
        assert sorted(p.name for p in (tmp_path / "out" / site).glob("*.json")) == [
            "classification.json",
            "super_resolution.json",
        ]


def test_vqa_rad_writes_vqa_sites(dataset_files, tmp_path):
    json_file, image_dir, _ = dataset_files.vqa_rad(tmp_path / "data")
    summary = read_vqa_rad(json_file, image_dir, tmp_path / "out")
    assert summary["output_dir"] == str(tmp_path / "out") and summary["task"] == "vqa"
    assert list(summary["sites"]) == ["vqa_rad"]
    _as_a_bundle_reads_it(summary, channels=1)


def test_slake_writes_vqa_sites(dataset_files, tmp_path):
    json_file, image_dir = dataset_files.slake(tmp_path / "data")
    summary = read_slake(json_file, image_dir, tmp_path / "out")
    assert summary["output_dir"] == str(tmp_path / "out") and summary["task"] == "vqa"
    assert sorted(summary["sites"]) == ["slake_ct", "slake_mri", "slake_x_ray"]
    _as_a_bundle_reads_it(summary, channels=3)


def test_vqa_rad_and_slake_share_answers(dataset_files, tmp_path):
    json_file, image_dir, rad = dataset_files.vqa_rad(tmp_path)
    summary = read_vqa_rad(json_file, image_dir, tmp_path / "out")
    assert summary["answers"] == ["2", "liver", "no", "yes"]
    loaded = _load_all(summary)["vqa_rad"]
    assert sum(len(loaded[s]) for s in SPLITS) == 5
    images = {s: {Path(i["image"]).name for i in loaded[s]} for s in SPLITS}
    assert not (images["training"] & images["test"]) and not (images["training"] & images["validation"])
    for item in (i for s in SPLITS for i in loaded[s]):
        assert summary["answers"][item["label"]] == item["answer"] and item["answer_type"] in (
            "closed",
            "open",
        )
    # the published test set, when phrase_type marks it
    for r in rad:
        r["phrase_type"] = "test_freeform" if r["qid"] == 5 else "freeform"
    (tmp_path / "rad.json").write_text(json.dumps(rad))
    official = read_vqa_rad(tmp_path / "rad.json", image_dir, tmp_path / "official")
    assert official["sites"]["vqa_rad"]["test"] == 1

    dataset_files.slake(tmp_path)
    slake = json.loads((tmp_path / "Slake1.0" / "all.json").read_text())
    out = read_slake(
        tmp_path / "Slake1.0" / "all.json",
        tmp_path / "Slake1.0" / "imgs",
        tmp_path / "slake",
        answers=summary["answers"],
    )
    assert sorted(out["sites"]) == ["slake_ct", "slake_mri", "slake_x_ray"]
    assert out["answers"] == ["2", "left lung", "liver", "no", "yes"]  # union with VQA-RAD's, no Chinese
    assert [sum(out["sites"][s][k] for k in SPLITS) for s in sorted(out["sites"])] == [2, 1, 1]
    for site, splits in _load_all(out).items():
        assert all(i["question_type"] in ("Organ", "unknown") for s in SPLITS for i in splits[s])
        validate_datalist(out["sites"][site]["datalist"], "vqa", expected_channels=3)
    # the release folder with its official splits, one site
    for name, rows in (("train.json", slake[:3]), ("validate.json", slake[3:4]), ("test.json", slake[4:])):
        (tmp_path / "Slake1.0" / name).write_text(json.dumps(rows, ensure_ascii=False))
    one = read_slake(
        tmp_path / "Slake1.0", tmp_path / "Slake1.0" / "imgs", tmp_path / "one", site_by_modality=False
    )
    assert [one["sites"]["slake"][s] for s in SPLITS] == [2, 1, 1]


def _assert_shared_vocabulary(summary: dict) -> None:
    """Every produced site holds the summary's vocabulary, which covers every training question word."""
    vocabulary = summary["vocabulary"]
    assert (
        vocabulary[:2] == [PAD, UNKNOWN] and len(vocabulary) > 2 and len(set(vocabulary)) == len(vocabulary)
    )
    for info in summary["sites"].values():
        datalist = json.loads(Path(info["datalist"]).read_text())
        assert datalist["vocabulary"] == vocabulary
        for item in datalist["training"]:
            assert set(words(item["question"])) <= set(vocabulary), item["question"]


def test_vqa_vocabulary_shared_across_sites(dataset_files, tmp_path):
    slake = [
        {"qid": 1, "img_name": "a/source.jpg", "question": "Which organ is enlarged?", "answer": "Liver", "q_lang": "en", "answer_type": "OPEN", "modality": "CT"},
        {"qid": 2, "img_name": "b/source.jpg", "question": "Is the kidney abnormal?", "answer": "Yes", "q_lang": "en", "answer_type": "CLOSED", "modality": "CT"},
        {"qid": 3, "img_name": "c/source.jpg", "question": "Is this a T2 weighted scan?", "answer": "No", "q_lang": "en", "answer_type": "CLOSED", "modality": "MRI"},
        {"qid": 4, "img_name": "d/source.jpg", "question": "Where's the lesion?", "answer": "Left Lung", "q_lang": "en", "answer_type": "OPEN", "modality": "X-Ray"},
        {"qid": 5, "img_name": "e/source.jpg", "question": "Held out words only", "answer": "No", "q_lang": "en", "answer_type": "CLOSED", "modality": "MRI"},
        {"qid": 6, "img_name": "f/source.jpg", "question": "Unseen validation question", "answer": "Yes", "q_lang": "en", "answer_type": "CLOSED", "modality": "CT"},
    ]  # fmt: skip
    for r in slake:
        dataset_files.png(tmp_path / "imgs" / r["img_name"], (10, 10, 3))
    for name, rows in (("train.json", slake[:4]), ("validate.json", slake[5:]), ("test.json", slake[4:5])):
        (tmp_path / "Slake1.0" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "Slake1.0" / name).write_text(json.dumps(rows))
    out = read_slake(tmp_path / "Slake1.0", tmp_path / "imgs", tmp_path / "slake")
    assert sorted(out["sites"]) == ["slake_ct", "slake_mri", "slake_x_ray"]
    _assert_shared_vocabulary(out)
    # the union over the sites' training questions only: held-out words are not in it
    assert {"kidney", "weighted", "where's"} <= set(out["vocabulary"])
    assert not {"held", "unseen"} & set(out["vocabulary"])

    for k in range(3):
        dataset_files.png(tmp_path / "rad" / f"synpic{k}.jpg", (10, 10))
    rad = [
        {"qid": k, "image_name": f"synpic{k % 3}.jpg", "question": q, "answer": a, "answer_type": "CLOSED"}
        for k, (q, a) in enumerate([("Is there a fracture?", "yes"), ("Is it normal?", "no"), ("Is the heart big?", "yes")])
    ]  # fmt: skip
    (tmp_path / "rad.json").write_text(json.dumps(rad))
    summary = read_vqa_rad(tmp_path / "rad.json", tmp_path / "rad", tmp_path / "out", test_fraction=0.0)
    _assert_shared_vocabulary(summary)
