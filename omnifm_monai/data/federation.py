"""Federation sites: sites that own their subjects, so a federated benchmark can rank methods.

The reference sites (:mod:`.reference_sites`) cut every ICBM-derived site from one volume with one slab split,
so a site's Local model has seen its test anatomy. Here every site has subjects of its own, virtual subjects
made from the real anatomy by random diffeomorphic deformations (:mod:`.subjects`), each subject wholly in one
split (``train_subjects`` / ``val_subjects`` / ``test_subjects`` per site): a site is tested only on subjects it
never trained on, and no subject is shared between sites. Sites (:data:`SITES`):

- cross-modality (:data:`SCENARIOS`): ``t1`` (real ICBM152 T1 intensities), ``t2w`` / ``pdw`` / ``flair``
  (simulated contrasts of the ICBM tissue maps, :mod:`.appearance`), ``ct`` (real head CT intensities);
- intra-modality: ``t1_scanner_a`` / ``_b`` (ICBM) and ``t1_scanner_c`` (Colin27) T1 through the simulated
  scanners of :mod:`.simulation`; also ``colin_t1`` (real Colin27 intensities);
- ``t1_simulated``: a spin-echo T1w simulated like ``t2w``, the counterpart of ``t1`` for checking that
  simulated images are not easier than real ones;
- real-image evaluation sites ``real_icbm_t1``, ``real_colin_t1``, ``real_head_ct``: the undeformed real
  volumes on the same grid, split into slabs as the reference sites are (use their test split: a model
  trained elsewhere is scored there on real images as they are).

Items are the subjects' axial slices for the reference sites' tasks and datalist metadata, so the bundles
train on these sites unchanged; every item records its ``subject`` (``<site>/s03``) and provenance (image
kind, label source, the deformation's parameters). VQA items say whether their answer is ``site_constant``.
Asked for by name, ``segmentation_3d`` items are the same subjects' volumes on the ``spacing`` grid
(:mod:`.volumes`; the 3D segmentation bundle trains on them).
``DATA_CARD.md`` and ``sites.json`` (with :data:`BUILDER_VERSION` and every argument) describe the build.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import PathLike

from omnifm_monai.transforms.text import build_vocabulary

from .appearance import CONTRASTS, Realism, real_appearance, scan, simulate_contrast
from .layout import SPLITS, TASKS, VOLUME_TASKS, replaced_atomically, write_datalist
from .reference_sites import LEVELS, LICENCES, _names, _task_items, _task_meta
from .simulation import SCANNERS, TISSUE, _rng
from .slicing import _extent, _slices, _split
from .sources import INVESALIUS_FILE, MRICRON_DIR, _colin_t1, _head_ct, _icbm_t1
from .subjects import Deformation, _Anatomy, resample_volume, virtual_subject
from .volumes import VOLUME_DESCRIPTION, _volume_items, _volumes

__all__ = ["BUILDER_VERSION", "SCENARIOS", "SITES", "build_federation_sites"]

logger = logging.getLogger(__name__)

BUILDER_VERSION = "federation-1"
_ALL, _CT = TASKS + VOLUME_TASKS, ("classification", "super_resolution", "vqa")
# site -> (modality, VQA modality answer, tasks, anatomy, image model); the first three as in
# reference_sites.SITES. Image model: "real" (deformed real intensities), a CONTRASTS or SCANNERS name
# (simulated), or "undeformed" (the real volume itself, a real-image evaluation site).
SITES: dict[str, tuple[str, str, tuple[str, ...], str, str]] = {
    "t1": ("MR T1w", "mri t1", _ALL, "icbm", "real"),
    "t2w": ("MR T2w", "mri t2", _ALL, "icbm", "t2w"),
    "pdw": ("MR PDw", "mri pd", _ALL, "icbm", "pdw"),
    "flair": ("MR FLAIR", "mri flair", _ALL, "icbm", "flair"),
    "ct": ("CT", "ct", _CT, "ct", "real"),
    "colin_t1": ("MR T1w", "mri t1", _ALL, "colin", "real"),
    "t1_scanner_a": ("MR T1w", "mri t1", _ALL, "icbm", "t1_scanner_a"),
    "t1_scanner_b": ("MR T1w", "mri t1", _ALL, "icbm", "t1_scanner_b"),
    "t1_scanner_c": ("MR T1w", "mri t1", _ALL, "colin", "t1_scanner_c"),
    "t1_simulated": ("MR T1w", "mri t1", _ALL, "icbm", "t1w"),
    "real_icbm_t1": ("MR T1w", "mri t1", _ALL, "icbm", "undeformed"),
    "real_colin_t1": ("MR T1w", "mri t1", _ALL, "colin", "undeformed"),
    "real_head_ct": ("CT", "ct", _CT, "ct", "undeformed"),
}
SCENARIOS = {
    "cross_modality": ("t1", "t2w", "pdw", "flair", "ct"),
    "intra_modality": ("t1_scanner_a", "t1_scanner_b", "t1_scanner_c"),
    "real": ("real_icbm_t1", "real_colin_t1", "real_head_ct"),
}
# provenance of a real volume's items: a dict like a deformation's, never None (a bundle collates provenance)
UNDEFORMED = {"model": "undeformed"}
_PACKAGES = {"icbm": "nilearn", "colin": "mricron-data", "ct": "invesalius-examples"}


def _kind(model: str) -> str:
    return (
        "simulated-contrast" if model in CONTRASTS else "simulated-scanner" if model in SCANNERS else "real"
    )


def _load_anatomy(name: str, spacing: float, mricron: Path, inv3: Path, window) -> _Anatomy:
    """A source volume on the isotropic grid; ICBM also carries its CSF fraction for simulated contrasts."""
    if name == "icbm":
        vol = _icbm_t1()
        csf = np.clip((vol.image > 0) - vol.tissue.sum(0), 0, 1)  # type: ignore[union-attr]
        return resample_volume(_Anatomy(**vars(vol), csf=csf), spacing)
    return resample_volume(_colin_t1(mricron) if name == "colin" else _head_ct(inv3, window), spacing)


def _subject(anat: _Anatomy, site: str, sid: str, seed: int, deformation: Deformation, realism: Realism):
    """Virtual subject ``sid`` of ``site``: deformation and appearance drawn from (seed, site, subject) only."""
    model = SITES[site][4]
    vol, _, deform = virtual_subject(
        anat, f"{anat.name}_{sid}", _rng(seed, site, sid, "deformation"), deformation
    )
    rng = _rng(seed, site, sid, "appearance")
    if model in CONTRASTS:
        image, look = simulate_contrast(vol, model, realism, rng)
        source = f"{anat.source.split(':')[0]}:ICBM152 2009a GM/WM/CSF fractions, {model} signal equation"
    else:
        image, look = real_appearance(vol, realism, rng, mr=SITES[site][0] != "CT")
        source = anat.source
        if model in SCANNERS:
            image, scanner = scan(replace(vol, image=image), model, rng)
            look, source = {**look, **scanner}, f"{anat.source} through simulated scanner {model}"
    return replace(vol, image=image, image_kind=_kind(model), source=source), deform, look


def _mark_site_constant(items: dict[str, list[dict]]) -> None:
    """``site_constant``: every item of the site asking the same question has the same answer (the modality
    question always; a yes/no question with one answer at this site, e.g. bone in a skull-stripped brain).
    Judged per question text, so it also catches a template whose other questions vary."""
    answers: dict[str, set[str]] = {}
    for item in (i for split in items.values() for i in split):
        answers.setdefault(item["question"], set()).add(item["answer"])
    for item in (i for split in items.values() for i in split):
        item["site_constant"] = len(answers[item["question"]]) == 1


def _subjects(site: str, anat: _Anatomy, args: dict, deformation: Deformation, realism: Realism):
    """Yield a site's subjects one at a time (memory stays flat): (id, volume, deformation, appearance,
    slices per split, level bin bounds)."""
    seed, stride = args["seed"], args["slice_stride"]
    if SITES[site][4] == "undeformed":  # one real volume: leak-free slabs as the reference sites
        lo, hi = _extent(anat.brain)
        slabs, bounds = _split(lo, hi, len(LEVELS), args["gap"], stride, 0, args["real_split_fractions"],
                               _rng(seed, anat.name))  # fmt: skip
        yield f"{site}/{anat.name}", anat, UNDEFORMED, {}, slabs, bounds
        return
    counts = (args["train_subjects"], args["val_subjects"], args["test_subjects"])
    for index, split in enumerate(s for s, n in zip(SPLITS, counts, strict=True) for _ in range(n)):
        sid = f"s{index:02d}"
        vol, deform, look = _subject(anat, site, sid, seed, deformation, realism)
        lo, hi = _extent(vol.brain)
        slabs = {s: list(range(lo, hi + 1, stride)) if s == split else [] for s in SPLITS}
        yield f"{site}/{sid}", vol, deform, look, slabs, np.linspace(lo, hi + 1, len(LEVELS) + 1)


def _site(
    site: str, anat: _Anatomy, folder: Path, tasks: list[str], args: dict, deformation: Deformation,
    realism: Realism,
) -> tuple[dict[str, dict], dict, dict]:  # fmt: skip
    """Write a site's slices (and volumes, for ``segmentation_3d``); return its items per task, its datalists'
    metadata and its subjects' record."""
    items: dict[str, dict[str, list[dict]]] = {t: {s: [] for s in SPLITS} for t in tasks}
    subjects: dict[str, dict] = {}
    slice_tasks = [t for t in tasks if t not in VOLUME_TASKS]
    folder.mkdir(parents=True)
    if slice_tasks:
        (folder / "images").mkdir()
        if anat.tissue is not None:
            (folder / "labels").mkdir()
    for subject, vol, deform, look, slabs, bounds in _subjects(site, anat, args, deformation, realism):
        made: dict[str, dict[str, list[dict]]] = {}
        if slice_tasks:
            records = _slices(vol, folder, slabs, bounds, args["size"])
            made = {t: _task_items(vol, site, t, records, args["seed"], SITES) for t in slice_tasks}
        if "segmentation_3d" in tasks:  # the same slices as whole volumes: one per contiguous run of a split
            made["segmentation_3d"] = _volume_items(
                vol, _volumes(vol, folder, slabs, args["slice_stride"]), SPLITS
            )
        for task, per_split in made.items():
            for split, new in per_split.items():
                for item in new:
                    item["subject"] = subject
                    item["provenance"]["virtual_subject"] = deform
                items[task][split] += new
        subjects[subject] = {"split": [s for s in SPLITS if slabs[s]], "slices": {s: len(v) for s, v in slabs.items()},
                             "deformation": deform, "appearance": look}  # fmt: skip
    if "vqa" in items:
        _mark_site_constant(items["vqa"])
    meta_vol = replace(vol, name=anat.name)  # the site's image kind and source; volume: the real source
    metas = {t: _task_meta(site, t, meta_vol, SITES) for t in slice_tasks}
    if "segmentation_3d" in tasks:
        metas["segmentation_3d"] = {**_task_meta(site, "segmentation", meta_vol, SITES), "task": "segmentation_3d",
                                    "description": VOLUME_DESCRIPTION, "spacing_mm": args["spacing"]}  # fmt: skip
    return items, metas, subjects


def build_federation_sites(
    output_dir: PathLike,
    size: int = 32,
    seed: int = 0,
    sites: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    overwrite: bool = False,
    train_subjects: int = 3,
    val_subjects: int = 1,
    test_subjects: int = 2,
    spacing: float = 2.0,
    slice_stride: int = 1,
    deformation: Mapping[str, float] | None = None,
    realism: Mapping[str, float] | None = None,
    gap: int = 2,
    real_split_fractions: Sequence[float] = (0.2, 0.1, 0.7),
    ct_window: Sequence[float] = (40.0, 80.0),
    mricron_dir: PathLike = MRICRON_DIR,
    invesalius_file: PathLike = INVESALIUS_FILE,
) -> dict:
    """Build federation sites whose subjects are their own into ``output_dir`` (written atomically).

    Args:
        output_dir: created; must not exist or be empty unless ``overwrite``.
        size: output slices are ``size`` x ``size`` pixels (square field of view, as the reference sites).
        seed: with the site and subject index, it decides each subject's deformation and appearance.
        sites / tasks: subsets of :data:`SITES` / :data:`TASKS` (default all; comma-separated string ok);
            ``segmentation_3d`` (asked for by name) also writes each subject's volume on the ``spacing`` grid.
        train_subjects / val_subjects / test_subjects: virtual subjects per site in each split.
        spacing: isotropic grid (mm) the volumes are put on before deforming; lower it for large ``size``.
        slice_stride: keep every ``slice_stride``-th axial slice of the brain's extent (1: all).
        deformation: overrides of :class:`~omnifm_monai.data.subjects.Deformation` (dict).
        realism: overrides of :class:`~omnifm_monai.data.appearance.Realism` (dict).
        gap / real_split_fractions: slab split of the real-image sites (unused slices between slabs;
            training / validation / test shares, mostly test: they are there to be scored on).
        ct_window: (level, width) HU of the CT before scaling to [0, 1].
        mricron_dir / invesalius_file: Debian package locations; missing -> their sites are skipped.

    Returns:
        the summary also written to ``sites.json``.
    """
    t0 = time.time()
    args = {k: v for k, v in locals().items() if k != "t0"}
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it.")
    sites, tasks = _names(sites, SITES), _names(tasks, TASKS)
    unknown = sorted(set(sites) - set(SITES)) + sorted(set(tasks) - set(TASKS + VOLUME_TASKS))
    if unknown:
        raise ValueError(
            f"unknown site(s)/task(s) {unknown}; sites: {list(SITES)}, tasks: {list(TASKS + VOLUME_TASKS)}."
        )
    if min(train_subjects, val_subjects, test_subjects) < 0 or train_subjects < 1 or slice_stride < 1:
        raise ValueError(
            "a site needs >= 1 training subject, >= 0 validation / test subjects, slice_stride >= 1."
        )
    if len(real_split_fractions) != 3 or abs(sum(real_split_fractions) - 1) > 1e-6:
        raise ValueError(f"real_split_fractions must be 3 shares summing to 1, got {real_split_fractions}.")
    deform, look = Deformation.of(deformation), Realism.of(realism)
    args.update(output_dir=str(out), sites=sites, tasks=tasks, deformation=asdict(deform), realism=asdict(look),
                real_split_fractions=list(real_split_fractions), ct_window=list(ct_window),
                mricron_dir=str(mricron_dir), invesalius_file=str(invesalius_file))  # fmt: skip
    mricron, inv3 = Path(mricron_dir), Path(invesalius_file)
    needs = {"colin": mricron / "ch2.nii.gz", "ct": inv3}
    skipped = {s: f"Debian package {_PACKAGES[SITES[s][3]]} not found ({needs[SITES[s][3]]} missing)"
               for s in sites if SITES[s][3] in needs and not needs[SITES[s][3]].is_file()}  # fmt: skip
    for site, reason in skipped.items():
        logger.warning("federation sites: skipping %s: %s", site, reason)
    summary: dict[str, Any] = {"builder_version": BUILDER_VERSION, "arguments": args,
                               "scenarios": {k: list(v) for k, v in SCENARIOS.items()}, "sites": {},
                               "skipped": skipped}  # fmt: skip
    with replaced_atomically(out) as tmp:
        anatomies: dict[str, _Anatomy] = {}
        vqa: dict[str, tuple[dict, dict]] = {}
        for site in (s for s in SITES if s in sites and s not in skipped):
            modality, _, site_tasks, anatomy, model = SITES[site]
            todo = [t for t in site_tasks if t in tasks]
            if not todo:  # e.g. a CT site when only segmentation is asked for
                continue
            if anatomy not in anatomies:  # each source volume is loaded and resampled once
                anatomies[anatomy] = _load_anatomy(
                    anatomy, spacing, mricron, inv3, tuple(map(float, ct_window))
                )
            items, metas, subjects = _site(site, anatomies[anatomy], tmp / site, todo, args, deform, look)
            for task in todo:
                if task == "vqa":  # written below, once every site's training questions are known
                    vqa[site] = (metas[task], items[task])
                else:
                    write_datalist(tmp / site, task, {**metas[task], **items[task]})
            meta = next(iter(metas.values()))
            summary["sites"][site] = {
                "modality": modality, "image": _kind(model), "model": model, "anatomy": anatomies[anatomy].name,
                "package": _PACKAGES[anatomy], "source": meta["source"], "segmentation_labels": anatomies[anatomy].tissue_source,
                "level_labels": anatomies[anatomy].brain_source, "subjects": subjects,
                "tasks": {t: {s: len(v) for s, v in items[t].items()} for t in todo},
            }  # fmt: skip
        # one vocabulary over every site's training questions: federated sites share token indices
        vocabulary = build_vocabulary(i["question"] for _, items in vqa.values() for i in items["training"])
        for site, (meta, items) in vqa.items():
            write_datalist(tmp / site, "vqa", {**meta, "vocabulary": vocabulary, **items})
        summary["packages_used"] = sorted({v["package"] for v in summary["sites"].values()})
        summary["build_seconds"] = round(time.time() - t0, 1)
        with open(tmp / "sites.json", "w") as f:
            json.dump(summary, f, indent=1)
        (tmp / "DATA_CARD.md").write_text(_data_card(summary, deform, look))
    summary["output_dir"] = str(out)
    return summary


_CARD = """# Federation sites: data card

Builder `{version}`; arguments in `sites.json`. Slices {size}x{size} px from volumes put on a {spacing} mm
isotropic grid; images float32 in [0, 1], labels uint8, 2D NIfTI whose affine maps pixels to the volume's
world space. Volumes (task `segmentation_3d`, when asked for): each subject's brain extent, cropped in-plane
to the head, on the {spacing} mm grid (real-image sites: one volume per slab).

**Subjects.** Every site owns its subjects; none is shared between sites. A virtual subject is a real
anatomy (ICBM152 2009a T1 with its GM/WM maps, nilearn; Colin27 T1, Debian mricron-data, GM/WM by 3-class
k-means inside `ch2bet`; a head CT, Debian invesalius-examples, brain and bone masks from HU thresholds) warped,
image and label maps together, by the exponential of a random stationary velocity field (scaling and
squaring, {steps} steps): a global scaling exp(U(+-{scale})) and rotation U(+-{rotate_deg} deg) per axis, plus a
smooth random field of s.d. {displacement_mm} mm per component between control points {spacing_mm} mm apart (cubic
B-spline). Every field's Jacobian determinant is checked > 0 (range per subject in `sites.json`). Subjects are
reproducible from (seed, site, subject index). Split **by subject**: per site {train} training, {val} validation,
{test} test subjects, all axial slices of the brain's extent of each (stride {stride}); a site is validated and
tested only on subjects it never trained on. The anatomical variety is synthetic: all subjects of one anatomy
are deformations of one real brain (ICBM152 is itself an average of 152 brains).

**Images.** `real`: the deformed real image through a per-subject contrast curve image^g, g = exp(U(+-{gamma})),
and for MR a smooth bias field (strength {bias}). `simulated-contrast` (t2w, pdw, flair, t1_simulated): per-tissue
spin-echo / inversion-recovery signals with BrainWeb 1.5 T parameters (T1 ms, T2 ms, PD) {tissue}, each jittered
per subject by exp(N(0, {tissue_jitter})), (TR, TE, TI) ms {contrasts} (TI None nulls the nominal CSF), mixed by the
tissue fractions on the {spacing} mm grid (partial volume), each tissue with a smooth multiplicative texture
(s.d. {texture}, correlation {texture_mm} mm), point-spread blur FWHM {blur_mm} mm, bias field (strength {bias}) and
Rician noise (sigma {noise} of the brightest tissue, at the grid; the slices' anti-aliased downsampling averages
some of it away). `simulated-scanner`: a `real` T1 subject through a scanner (source, bias, gamma, blur FWHM mm
(x, y, z), noise) {scanners}. Calibration: without the texture and tissue jitter (the reference builder's
simulation) a Local segmentation model scored higher on simulated T1 (`t1_simulated`) than on real-intensity
T1 (`t1`); with these defaults it scores lower. Re-check that comparison when changing the parameters.

**Labels.** Segmentation: argmax of background / GM / WM fractions of the deformed maps resampled to the slice
(`template` for ICBM, `algorithmic` for Colin27). Levels {levels}: 4 equal bins of each subject's own axial
brain extent (mask area >= 10 % of its largest slice). VQA: the reference sites' templates answered from the
label maps and metadata, answers balanced per template, split and subject; `site_constant` is true when every
item of the site asking the same question has the same answer (always the modality question).

**Real-image evaluation sites** (`real_*`): the undeformed real volumes on the same grid with no intensity
change, cut into contiguous axial slabs (training / validation / test shares {fractions}, {gap} unused slices
between slabs, one block per level); their training slab exists so that bundles can start on them: score
models on their test split. Their anatomy is the one the virtual subjects of that source are deformed from.

| site | modality | image | anatomy | task | training | validation | test | subjects (train / val / test) |
|---|---|---|---|---|---|---|---|---|
{rows}

**Packages used**: {used}

{skipped_lines}

**Licences**: {licences}
"""


def _data_card(summary: dict, deformation: Deformation, realism: Realism) -> str:
    args = summary["arguments"]
    rows = []
    for site, s in summary["sites"].items():
        per_split = {sp: sum(sp in v["split"] for v in s["subjects"].values()) for sp in SPLITS}
        for task, c in s["tasks"].items():
            rows.append(
                f"| {site} | {s['modality']} | {s['image']} | {s['anatomy']} | {task} | {c['training']} | "
                f"{c['validation']} | {c['test']} | {' / '.join(str(per_split[sp]) for sp in SPLITS)} |"
            )
    skipped = [f"**Skipped**: {site}: {why}." for site, why in summary["skipped"].items()] or [
        "**Skipped**: none."
    ]
    return _CARD.format(
        version=summary["builder_version"], size=args["size"], spacing=args["spacing"], train=args["train_subjects"],
        val=args["val_subjects"], test=args["test_subjects"], stride=args["slice_stride"], gap=args["gap"],
        fractions=args["real_split_fractions"], **asdict(deformation), **asdict(realism), tissue=TISSUE,
        contrasts=CONTRASTS, scanners=SCANNERS, levels=list(LEVELS), rows="\n".join(rows),
        used=", ".join(summary["packages_used"]) or "none", skipped_lines="\n".join(skipped),
        licences="; ".join(f"{p}: {lic}" for p, lic in LICENCES.items() if p in summary["packages_used"]),
    )  # fmt: skip
