"""Reference-site builder: provenance, leak-free splits, shared labels, balance, loadability, atomicity."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

from omnifm_monai.data.reference_sites import (
    INVESALIUS_FILE,
    LEVELS,
    MRICRON_DIR,
    SCANNERS,
    SITES,
    SPLITS,
    TASKS,
    VQA_ANSWERS,
    build_reference_sites,
)
from omnifm_monai.transforms import PAD, UNKNOWN, build_vocabulary, words

SIZE, GAP, SEED = 48, 3, 7
HAS_CT = Path(INVESALIUS_FILE).is_file()
HAS_COLIN = Path(MRICRON_DIR, "ch2.nii.gz").is_file()
SIMULATED = ("icbm_t2w", "icbm_pdw", "icbm_flair")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "sites"
    summary = build_reference_sites(out, size=SIZE, seed=SEED, gap=GAP)
    return out, summary


def _datalists(out: Path):
    for site_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        for task in TASKS:
            path = site_dir / f"{task}.json"
            if path.is_file():
                yield site_dir.name, task, json.loads(path.read_text())


def _load(site_dir: Path, rel: str) -> np.ndarray:
    return np.asanyarray(nib.load(site_dir / rel).dataobj)


def test_sites_and_summary(built):
    out, summary = built
    expected = {s for s in SITES if (s != "head_ct" or HAS_CT) and (s != "colin_t1" or HAS_COLIN)}
    assert set(summary["sites"]) == expected
    on_disk = json.loads((out / "sites.json").read_text())
    for site, info in on_disk["sites"].items():
        for task, counts in info["tasks"].items():
            datalist = json.loads((out / site / f"{task}.json").read_text())
            assert counts == {s: len(datalist[s]) for s in SPLITS}
    assert summary["sites"]["icbm_t1"]["tasks"]["segmentation"]["training"] >= 10
    assert not list(out.parent.glob(".*partial*")), "temporary build folder left behind"
    card = (out / "DATA_CARD.md").read_text()
    assert "simulated-contrast" in card and f"more than {GAP} slices" in card and "GPL-2" in card
    used = {"nilearn", "nibabel", "dipy"} | {
        p for p, ok in (("mricron-data", HAS_COLIN), ("invesalius-examples", HAS_CT)) if ok
    }
    assert set(summary["packages_used"]) == used
    if HAS_CT and HAS_COLIN:
        assert "**Skipped**: none." in card


def test_every_item_has_provenance(built):
    out, _ = built
    for site, task, datalist in _datalists(out):
        assert (
            datalist["site"] == site and datalist["task"] == task and datalist["modality"] == SITES[site][0]
        )
        assert datalist["training"], (site, task)
        for split in SPLITS:
            for item in datalist[split]:
                prov = item["provenance"]
                assert set(prov) == {"image", "label", "source", "volume", "slice_index"}
                expected = (
                    "simulated-contrast"
                    if site in SIMULATED
                    else "simulated-scanner"
                    if site in SCANNERS
                    else "real"
                )
                assert prov["image"] == expected
                assert prov["label"] in ("template", "atlas", "algorithmic", "threshold", None)
                assert ":" in prov["source"] and isinstance(prov["slice_index"], int)
                assert not Path(item["image"]).is_absolute() and (out / site / item["image"]).is_file()
                if task == "super_resolution":
                    assert prov["label"] is None
                if task == "segmentation":
                    source = SCANNERS[site][0] if site in SCANNERS else site
                    assert prov["label"] == ("algorithmic" if source == "colin_t1" else "template")


def test_scanner_sites_shift_the_image_and_keep_the_labels(built):
    """A simulated scanner changes intensities only: same slices, same labels as its source site."""
    out, _ = built
    for site, (source, *_) in SCANNERS.items():
        mine, theirs = (json.loads((out / s / "segmentation.json").read_text()) for s in (site, source))
        for split in SPLITS:
            assert [i["provenance"]["slice_index"] for i in mine[split]] == [
                i["provenance"]["slice_index"] for i in theirs[split]
            ]
            for a, b in zip(mine[split], theirs[split], strict=True):
                assert np.array_equal(
                    nib.load(out / site / a["label"]).get_fdata(),
                    nib.load(out / source / b["label"]).get_fdata(),
                )
        a, b = (
            nib.load(out / s / d["training"][0]["image"]).get_fdata()
            for s, d in ((site, mine), (source, theirs))
        )
        assert np.abs(a - b).mean() > 0.02, site  # a visible shift, not a copy


def test_held_out_slices_keep_gap_from_training(built):
    out, _ = built
    for site, task, datalist in _datalists(out):
        by_split = {s: {} for s in SPLITS}
        for split in SPLITS:
            for item in datalist[split]:
                by_split[split].setdefault(item["provenance"]["volume"], set()).add(
                    item["provenance"]["slice_index"]
                )
        for volume, train in by_split["training"].items():
            for held_out in ("validation", "test"):
                other = by_split[held_out].get(volume, set())
                assert other, (site, task, held_out)
                assert min(abs(a - b) for a in train for b in other) > GAP, (site, task, held_out)
            val, test = by_split["validation"][volume], by_split["test"][volume]
            assert min(abs(a - b) for a in val for b in test) > GAP


def test_simulated_contrasts_share_icbm_labels(built):
    out, _ = built
    t1 = json.loads((out / "icbm_t1" / "segmentation.json").read_text())
    for site in SIMULATED:
        sim = json.loads((out / site / "segmentation.json").read_text())
        assert [i["provenance"]["slice_index"] for i in sim["training"]] == [
            i["provenance"]["slice_index"] for i in t1["training"]
        ]
        corr, gm_wm = [], []
        for a, b in zip(t1["training"], sim["training"], strict=True):
            label = _load(out / "icbm_t1", a["label"])
            np.testing.assert_array_equal(label, _load(out / site, b["label"]))
            x, y = _load(out / "icbm_t1", a["image"]), _load(out / site, b["image"])
            brain = label > 0
            if brain.sum() > 50 and (label == 1).any() and (label == 2).any():
                corr.append(np.corrcoef(x[brain], y[brain])[0, 1])
                gm_wm.append(
                    (y[label == 1].mean() - y[label == 2].mean(), x[label == 1].mean() - x[label == 2].mean())
                )
        assert np.median(corr) < 0.9, site
        sim_diff, t1_diff = np.mean(gm_wm, axis=0)
        assert t1_diff < 0  # T1: white matter brighter than grey matter
        if site in ("icbm_t2w", "icbm_pdw"):
            assert sim_diff > 0  # spin-echo T2w / PDw: contrast inverted


def test_segmentation_labels(built):
    out, _ = built
    for site, task, datalist in _datalists(out):
        if task != "segmentation":
            continue
        assert datalist["labels"] == {"0": "background", "1": "grey matter", "2": "white matter"}
        values = set()
        for item in datalist["training"][::4]:
            label = _load(out / site, item["label"])
            assert label.dtype == np.uint8 and label.shape == (SIZE, SIZE)
            values |= set(np.unique(label).tolist())
        assert values == {0, 1, 2}, site


def test_classification_levels_cover_every_split(built):
    out, _ = built
    for site, task, datalist in _datalists(out):
        if task != "classification":
            continue
        assert datalist["classes"] == list(LEVELS)
        for split in SPLITS:
            assert {i["label"] for i in datalist[split]} == set(range(len(LEVELS))), (site, split)
            assert all(LEVELS[i["label"]] == i["class_name"] for i in datalist[split])


def test_vqa_answers_shared_and_balanced(built):
    out, _ = built
    modality = Counter()
    for site, task, datalist in _datalists(out):
        if task != "vqa":
            continue
        assert datalist["answers"] == VQA_ANSWERS == sorted(VQA_ANSWERS)
        for split in SPLITS:
            templates: dict[str, Counter] = {}
            for item in datalist[split]:
                assert set(item) == {
                    "image",
                    "question",
                    "answer",
                    "label",
                    "answer_type",
                    "question_type",
                    "provenance",
                }
                assert item["answer"] in VQA_ANSWERS and VQA_ANSWERS[item["label"]] == item["answer"]
                assert item["answer_type"] == ("closed" if item["answer"] in ("yes", "no") else "open")
                templates.setdefault(item["question_type"], Counter())[item["answer"]] += 1
            assert {"modality", "level"} <= set(templates), (site, split)
            if site not in SCANNERS:  # the scanner sites are T1 by design (the intra-modality scenario)
                modality += templates["modality"]
            templates.pop("modality")
            for qtype, counts in templates.items():
                assert len(counts) >= 2 and max(counts.values()) / sum(counts.values()) <= 0.5, (
                    site,
                    split,
                    qtype,
                )
    assert len(modality) >= 4 and max(modality.values()) / sum(modality.values()) <= 0.5


def test_vqa_vocabulary_shared_and_covers_training_questions(built):
    out, _ = built
    vqa = {site: datalist for site, task, datalist in _datalists(out) if task == "vqa"}
    assert len(vqa) >= 2
    vocabularies = {tuple(d["vocabulary"]) for d in vqa.values()}
    assert len(vocabularies) == 1, "every site must share one vocabulary (same embedding indices)"
    vocabulary = list(vocabularies.pop())
    assert vocabulary[:2] == [PAD, UNKNOWN] and len(set(vocabulary)) == len(vocabulary)
    assert vocabulary == build_vocabulary(q["question"] for d in vqa.values() for q in d["training"])
    for site, datalist in vqa.items():
        for item in datalist["training"]:
            assert set(words(item["question"])) <= set(vocabulary), (site, item["question"])


def test_images_load_with_monai(built):
    out, _ = built
    loader = LoadImage(ensure_channel_first=True, image_only=True)
    for site, task, _ in _datalists(out):
        for split in SPLITS:
            items = load_decathlon_datalist(
                out / site / f"{task}.json", data_list_key=split, base_dir=out / site
            )
            assert all(Path(i["image"]).is_file() for i in items), (site, task, split)
            if task == "segmentation":
                assert all(Path(i["label"]).is_file() for i in items)
                label = loader(items[0]["label"])
                assert tuple(label.shape) == (1, SIZE, SIZE)
        if task == "super_resolution":  # every task shares these image files
            for item in items[:3] + items[-1:]:
                img = loader(item["image"])
                assert tuple(img.shape) == (1, SIZE, SIZE), site
                assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0 and float(img.max()) > 0.1


def test_slice_affine_matches_source_volume(built):
    out, _ = built
    item = json.loads((out / "icbm_t1" / "segmentation.json").read_text())["test"][0]
    img = nib.load(out / "icbm_t1" / item["image"])
    spacing = np.linalg.norm(img.affine[:3, :2], axis=0)
    assert np.allclose(spacing, spacing[0]) and spacing[0] > 1.0  # isotropic, coarser than the 1 mm source
    assert np.allclose(img.header.get_zooms()[:2], spacing)
    # ICBM152 2009a: 1 mm RAS grid whose voxel z=k sits at world z = k - 72
    assert img.affine[2, 3] == pytest.approx(item["provenance"]["slice_index"] - 72.0)


def test_refuses_non_empty_output(built, tmp_path):
    out, _ = built
    with pytest.raises(FileExistsError, match="overwrite"):
        build_reference_sites(out, size=SIZE)
    with pytest.raises(ValueError, match="unknown"):
        build_reference_sites(tmp_path / "x", sites=["no_such_site"])


def test_same_seed_same_datalists(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    again.mkdir()  # an empty folder is accepted
    sites = ["icbm_t1", "icbm_flair", "dwi_b0"] + (["head_ct"] if HAS_CT else [])
    build_reference_sites(again, size=SIZE, seed=SEED, gap=GAP, sites=sites)
    for site in sites:
        for path in sorted((out / site).glob("*.json")):
            assert json.loads(path.read_text()) == json.loads((again / site / path.name).read_text()), path
    build_reference_sites(again, size=SIZE, seed=SEED, gap=GAP, sites=["dwi_b0"], overwrite=True)
    assert sorted(p.name for p in again.iterdir() if p.is_dir()) == ["dwi_b0"]


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    from omnifm_monai.data import reference_sites

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(reference_sites, "_task_items", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_reference_sites(tmp_path / "out", size=32, sites=["dwi_b0"])
    assert list(tmp_path.iterdir()) == []


def test_without_debian_sources(tmp_path):
    out = tmp_path / "pip_only"
    summary = build_reference_sites(
        out, size=32, sites="colin_t1,head_ct,dwi_b0", mricron_dir=tmp_path / "none",
        invesalius_file=tmp_path / "none.inv3",
    )  # fmt: skip
    assert set(summary["sites"]) == {"dwi_b0"} and set(summary["skipped"]) == {"colin_t1", "head_ct"}
    card = (out / "DATA_CARD.md").read_text()
    assert "colin_t1: Debian package mricron-data not found" in card
    assert "head_ct: Debian package invesalius-examples not found" in card


def test_cli(tmp_path):
    fire = pytest.importorskip("fire")
    from omnifm_monai.data.__main__ import COMMANDS

    out = tmp_path / "cli"
    fire.Fire(
        COMMANDS,
        command=["build_reference_sites", "--output_dir", str(out), "--sites", "dwi_b0", "--size", "32"],
    )
    assert (out / "dwi_b0" / "super_resolution.json").is_file()


def test_datalists_pass_validation(built):
    validation = pytest.importorskip("omnifm_monai.data.validation")
    out, _ = built
    for site, task, _ in _datalists(out):
        validation.validate_datalist(out / site / f"{task}.json", task, max_items=2, expected_channels=1)
