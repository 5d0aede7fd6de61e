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

This module is the builder: the sites, their task items (segmentation, level classification,
super-resolution, template VQA) and the data card. The volumes come from :mod:`.sources` (real packaged
images) and :mod:`.simulation` (simulated contrasts and scanners), the slices and splits from
:mod:`.slicing`; every datalist is written in the one layout ``<output_dir>/<site>/<task>.json`` of
:mod:`.layout`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import PathLike

from omnifm_monai.transforms.text import build_vocabulary

from .layout import SPLITS, TASKS, replaced_atomically, write_datalist
from .simulation import SCANNERS, SEQUENCES, TISSUE, _rng, _scanner, _simulate
from .slicing import _extent, _slices, _split
from .sources import (
    CT_BONE_HU,
    INVESALIUS_FILE,
    MRICRON_DIR,
    _colin_t1,
    _head_ct,
    _icbm_t1,
    _real_sr,
    _Volume,
)

__all__ = ["LEVELS", "SCANNERS", "SITES", "TASKS", "VQA_ANSWERS", "build_reference_sites"]

logger = logging.getLogger(__name__)

LEVELS = ("inferior", "lower-middle", "upper-middle", "superior")
SEG_LABELS = {"0": "background", "1": "grey matter", "2": "white matter"}
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
VISIBLE_FRACTION = 0.005  # a tissue is "visible" when it covers >= 0.5 % of the slice


def _names(value: Sequence[str] | str | None, known) -> list[str]:
    """``None`` -> all known names; a list, or a comma-separated string as a shell passes it."""
    if value is None:
        return list(known)
    return [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]


# ------------------------------------------------------------------------------------------- tasks
def _prov(vol: _Volume, rec: dict, label: str | None) -> dict:
    return {"image": vol.image_kind, "label": label, "source": vol.source, "volume": vol.name,
            "slice_index": rec["z"]}  # fmt: skip


def _vqa_items(vol: _Volume, site: str, rec: dict, sites: Mapping[str, tuple] = SITES) -> list[dict]:
    """Template questions answered from the label maps and the site's metadata (its row of ``sites``)."""
    yes_no = {True: "yes", False: "no"}
    qs = [("modality", "", sites[site][1], None)]  # (template, tissue, answer, label source of the answer)
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


def _task_items(
    vol: _Volume, site: str, task: str, records: list[dict], seed: int, sites: Mapping[str, tuple] = SITES
) -> dict[str, list[dict]]:
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
            items[rec["split"]] += _vqa_items(vol, site, rec, sites)
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


def _task_meta(site: str, task: str, vol: _Volume, sites: Mapping[str, tuple] = SITES) -> dict:
    meta = {"site": site, "modality": sites[site][0], "task": task, "description": _DESCRIPTIONS[task],
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
    summary: dict[str, Any] = {"size": size, "seed": seed, "gap": gap, "window": list(ct_window), "sites": {},
                               "skipped": skipped}  # fmt: skip
    with replaced_atomically(out) as tmp:
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
                    write_datalist(folder, task, {**_task_meta(site, task, vol), **items})
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
            write_datalist(folder, "vqa", {**meta, "vocabulary": vocabulary, **items})
        summary["packages_used"] = sorted({v["package"] for v in summary["sites"].values()})
        summary["build_seconds"] = round(time.time() - t0, 1)
        with open(tmp / "sites.json", "w") as f:
            json.dump(summary, f, indent=1)
        (tmp / "DATA_CARD.md").write_text(_data_card(summary))
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
