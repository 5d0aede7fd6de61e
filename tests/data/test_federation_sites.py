"""Federation-site builder: subjects owned by sites, no leaks, determinism, diffeomorphic warps, big test sets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from omnifm_monai.data import BUILDER_VERSION, build_federation_sites
from omnifm_monai.data.federation import SITES, UNDEFORMED, _load_anatomy
from omnifm_monai.data.layout import SPLITS, TASKS
from omnifm_monai.data.slicing import _resample
from omnifm_monai.data.sources import INVESALIUS_FILE
from omnifm_monai.data.subjects import (
    Deformation,
    _Anatomy,
    jacobian_determinant,
    random_deformation,
    virtual_subject,
    warp,
)
from omnifm_monai.data.validation import check_datalist

SIZE, SEED, SPACING = 32, 3, 2.0
HAS_CT = Path(INVESALIUS_FILE).is_file()
# one site per image model (simulated contrast, simulated scanner, real CT) and two real-image sites
BUILT = ["t2w", "t1_scanner_a", "real_icbm_t1"] + (["ct", "real_head_ct"] if HAS_CT else [])
META = {"site", "modality", "task", "description", "image_provenance", "source", "volume"}
META_BY_TASK = {
    "segmentation": META | {"labels", "label_source"},
    "classification": META | {"classes", "label_source"},
    "super_resolution": META,
    "vqa": META | {"answers", "vocabulary"},
}


@pytest.fixture(scope="session")
def federation(tmp_path_factory):
    """The default benchmark suite's subjects per split and slice stride (its test sets are the ones whose
    sizes the tests check), on a few sites."""
    import yaml

    suite = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "benchmarks/suites/default.yaml").read_text()
    )
    split = {k: suite["data"][k] for k in ("train_subjects", "val_subjects", "test_subjects", "slice_stride")}
    out = tmp_path_factory.mktemp("federation") / "sites"
    summary = build_federation_sites(out, size=SIZE, seed=SEED, sites=BUILT, **split)
    return out, summary


def _datalists(out: Path):
    for site_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        for task in TASKS:
            path = site_dir / f"{task}.json"
            if path.is_file():
                yield site_dir.name, task, json.loads(path.read_text())


def _virtual(site: str) -> bool:
    return SITES[site][4] != "undeformed"


def test_summary_version_and_card(federation):
    out, summary = federation
    on_disk = json.loads((out / "sites.json").read_text())
    assert on_disk["builder_version"] == BUILDER_VERSION == summary["builder_version"]
    args = on_disk["arguments"]
    assert args["seed"] == SEED and args["test_subjects"] >= 2 and args["sites"] == BUILT
    assert (
        set(args["deformation"]) >= {"displacement_mm", "spacing_mm", "steps"} and "noise" in args["realism"]
    )
    assert set(on_disk["sites"]) == set(BUILT)
    for site, info in on_disk["sites"].items():
        for task, counts in info["tasks"].items():
            datalist = json.loads((out / site / f"{task}.json").read_text())
            assert counts == {s: len(datalist[s]) for s in SPLITS}
    card = (out / "DATA_CARD.md").read_text()
    assert BUILDER_VERSION in card and "simulated-contrast" in card and "by subject" in card
    assert not list(out.parent.glob(".*partial*")), "temporary build folder left behind"


def test_no_held_out_subject_is_trained_on_anywhere(federation):
    out, _ = federation
    subjects: dict[str, dict[str, set]] = {}
    for site, _, datalist in _datalists(out):
        for split in SPLITS:
            ids = {item["subject"] for item in datalist[split]}
            assert all(i.startswith(f"{site}/") for i in ids)
            subjects.setdefault(site, {s: set() for s in SPLITS})[split] |= ids
    trained = set().union(*(s["training"] for s in subjects.values()))
    for site, by_split in subjects.items():
        assert by_split["training"]
        if _virtual(site):  # a real-image site is one volume cut into slabs (gap between them) by design
            held_out = by_split["validation"] | by_split["test"]
            assert by_split["test"] and not held_out & trained, site
            assert not by_split["validation"] & by_split["test"]
    for a in subjects:  # no subject shared between sites
        for b in subjects:
            if a < b:
                assert not set().union(*subjects[a].values()) & set().union(*subjects[b].values())


def test_subjects_differ_between_sites(federation):
    out, summary = federation
    deformations = [
        tuple(s["deformation"]["scale"] + s["deformation"]["rotation_deg"])
        for info in summary["sites"].values()
        for s in info["subjects"].values()
        if s["deformation"] != UNDEFORMED
    ]
    args = json.loads((out / "sites.json").read_text())["arguments"]
    per_site = args["train_subjects"] + args["val_subjects"] + args["test_subjects"]
    assert len(deformations) == len(set(deformations)) == per_site * sum(map(_virtual, BUILT))
    a, b = (
        json.loads((out / s / "segmentation.json").read_text())["training"] for s in ("t2w", "t1_scanner_a")
    )
    z = min({i["provenance"]["slice_index"] for i in a} & {i["provenance"]["slice_index"] for i in b})
    la, lb = (
        np.asanyarray(
            nib.load(out / s / next(i for i in d if i["provenance"]["slice_index"] == z)["label"]).dataobj
        )
        for s, d in (("t2w", a), ("t1_scanner_a", b))
    )  # the same axial level of differently shaped heads
    assert (la != lb).mean() > 0.02


def test_provenance_of_every_item(federation):
    out, _ = federation
    kinds = {
        "real": "real",
        "undeformed": "real",
        "t2w": "simulated-contrast",
        "t1_scanner_a": "simulated-scanner",
    }
    for site, task, datalist in _datalists(out):
        assert set(datalist) - set(SPLITS) == META_BY_TASK[task], (site, task)  # as the reference sites
        for item in (i for s in SPLITS for i in datalist[s]):
            prov = item["provenance"]
            assert prov["image"] == kinds[SITES[site][4]] == datalist["image_provenance"]
            assert prov["label"] in ("template", "algorithmic", "threshold", None)
            assert isinstance(prov["slice_index"], int) and (out / site / item["image"]).is_file()
            deformation = prov["virtual_subject"]
            if _virtual(site):
                assert deformation["jacobian_range"][0] > 0 and len(deformation["scale"]) == 3
            else:
                assert deformation == UNDEFORMED


def test_every_datalist_passes_the_bundles_check(federation):
    out, _ = federation
    for site, task, _ in _datalists(out):
        check_datalist(str(out / site / f"{task}.json"), task, base_dir=str(out / site), expected_channels=1)


def test_classification_and_vqa_test_sets_are_big(federation):
    """>= 100 classification test slices per simulated site with every class, and >= 100 VQA test questions
    whose answer is not constant within the site (the VQA headline's items)."""
    out, _ = federation
    for site, task, datalist in _datalists(out):
        if task == "classification" and _virtual(site):
            assert len(datalist["test"]) >= 100, site
            assert {i["label"] for i in datalist["test"]} == {0, 1, 2, 3}
        if task == "vqa" and _virtual(site):
            assert sum(not i["site_constant"] for i in datalist["test"]) >= 100, site


def test_site_constant_vqa_items_are_marked(federation):
    out, _ = federation
    for site, task, datalist in _datalists(out):
        if task != "vqa":
            continue
        items = [i for s in SPLITS for i in datalist[s]]
        answers: dict[str, set] = {}
        for item in items:
            answers.setdefault(item["question"], set()).add(item["answer"])
        for item in items:
            assert item["site_constant"] == (len(answers[item["question"]]) == 1)
            if item["question_type"] == "modality":
                assert item["site_constant"] and item["answer"] == SITES[site][1]
        assert any(not i["site_constant"] for i in items)  # level questions vary inside every site


def test_real_sites_hold_undeformed_real_slices(federation):
    out, _ = federation
    anat = _load_anatomy("icbm", SPACING, Path(), Path(), (40.0, 80.0))
    spacing = np.linalg.norm(anat.affine[:3, :2], axis=0)
    datalist = json.loads((out / "real_icbm_t1" / "segmentation.json").read_text())
    assert {i["subject"] for i in datalist["test"]} == {"real_icbm_t1/icbm152_2009a"}
    for item in datalist["test"][::7]:
        z = item["provenance"]["slice_index"]
        expected = np.clip(_resample(anat.image[:, :, z], anat.crop, spacing, SIZE)[0], 0, 1)
        assert np.allclose(np.asanyarray(nib.load(out / "real_icbm_t1" / item["image"]).dataobj), expected)


def test_build_is_deterministic(tmp_path):
    kwargs = dict(size=SIZE, sites="t2w,real_icbm_t1", tasks="segmentation,vqa", train_subjects=1,
                  val_subjects=0, test_subjects=1, spacing=2.5)  # fmt: skip
    build_federation_sites(tmp_path / "a", seed=1, **kwargs)
    build_federation_sites(tmp_path / "b", seed=1, **kwargs)
    build_federation_sites(tmp_path / "c", seed=2, **{**kwargs, "sites": "t2w", "tasks": "segmentation"})
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "sites.json":  # it holds the build time and the output folder
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/t2w/segmentation.json").read_bytes() != (
        tmp_path / "c/t2w/segmentation.json"
    ).read_bytes()


def test_deformation_is_diffeomorphic():
    for index in range(3):
        ddf, params = random_deformation((48, 56, 48), SPACING, np.random.default_rng(index), Deformation())
        det = jacobian_determinant(ddf)
        assert det.min() > 0 and det.max() > 1.05 and det.min() < 0.95  # deforms, never folds
        assert params["jacobian_range"] == [round(float(det.min()), 4), round(float(det.max()), 4)]
    with pytest.raises(ValueError, match="folds"):
        random_deformation(
            (48, 56, 48), SPACING, np.random.default_rng(0), Deformation(displacement_mm=40, spacing_mm=8)
        )


def test_labels_move_with_the_image():
    """Image, tissue maps and masks are warped by one field; the label map is the warped label map."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (40, 44, 36)), indexing="ij")
    r = np.sqrt(((x - 18) / 1.2) ** 2 + (y - 23) ** 2 + ((z - 17) / 0.9) ** 2)
    wm, gm = (r < 8).astype(np.float32), ((r >= 8) & (r < 13)).astype(np.float32)
    anat = _Anatomy("synthetic", 0.8 * wm + 0.5 * gm + 0.1 * (x > 20), np.diag([2.0, 2, 2, 1]), "synthetic",
                    "none", tissue=np.stack([gm, wm]), brain=r < 13, crop=(0, 40, 0, 44))  # fmt: skip
    subject, ddf, _ = virtual_subject(anat, "synthetic_s00", np.random.default_rng(0), Deformation())
    assert np.array_equal(subject.image, warp(anat.image[None], ddf)[0])
    assert np.array_equal(subject.tissue, warp(anat.tissue, ddf))
    assert np.array_equal(subject.brain, warp(anat.brain[None].astype(np.float32), ddf)[0] >= 0.5)
    label = lambda t: np.argmax(np.stack([1 - t.sum(0), *t]), axis=0)  # noqa: E731
    moved = warp(label(anat.tissue)[None].astype(np.float32), ddf, mode="nearest")[0]
    assert (label(subject.tissue) != label(anat.tissue)).mean() > 0.01  # it did move ...
    assert (label(subject.tissue) == moved).mean() > 0.97  # ... as the label map moves (boundaries aside)


@pytest.mark.slow
# the segmentation bundle collates provenance (a virtual subject's, a real volume's); VQA reads the vocabulary
@pytest.mark.parametrize(
    "bundle, site",
    [("omnifm_segmentation", "t2w"), ("omnifm_segmentation", "real_icbm_t1"), ("omnifm_vqa", "t2w")],
)
def test_bundles_train_on_the_sites_unchanged(federation, bundle, site, tmp_path):
    from monai.bundle import ConfigWorkflow

    out, _ = federation
    configs = Path(__file__).resolve().parents[2] / "bundles" / bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"), workflow_type="train",
        bundle_root=str(configs.parent), dataset_dir=str(out / site), ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"), image_size=SIZE, batch_size=8, max_epochs=1,
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()
