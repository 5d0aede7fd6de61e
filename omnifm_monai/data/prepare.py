"""``python -m omnifm_monai.data prepare``: a downloaded dataset, or a folder of NIfTI images, as sites.

Writes the project's one site layout, ``<output>/<site>/<task>.json`` (:mod:`omnifm_monai.data.layout`), which
a bundle reads with ``--dataset_dir <output>/<site>``, ``python -m omnifm_monai.fl simulate --reference_dir
<output>`` federates, and NVFlare jobs (``federated/job.py``) run. The datasets' own readers
(:mod:`omnifm_monai.data.readers`) do the reading; this module picks the partition into sites, checks every
file the sites list (:func:`~omnifm_monai.data.validation.validate_datalist`), and builds the output folder
beside its final place so that a failure leaves nothing half-written (and an earlier output as it was).

Formats and partitions (the first is the default; ``PARTITIONS``):

- ``medmnist`` (a folder of MedMNIST v2 ``<flag>.npz`` / ``<flag>_<size>.npz``): ``subset``, one subset per
  site (the paper's cross-modality); ``dirichlet``, one subset's items dealt over ``num_sites`` sites with
  class proportions drawn from a Dirichlet(``alpha``) (label skew), within each shipped split.
- ``fets`` / ``brats`` (case folders ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``): ``institution``, the
  FeTS2022 partitioning CSV (``partition_csv``, default ``<input>/partitioning_1.csv``), one sequence
  (``modality``, default ``flair``; ``all`` for the four as channels); ``modality``, the cases dealt into
  disjoint groups, one sequence per site (``modality``: the sequences, default all four). ``fets`` defaults
  to ``institution``, ``brats`` to ``modality``. ``task=segmentation_3d`` (also for ``nifti``) names the
  datalists for the whole-volume bundle.
- ``breakhis`` (the ``BreaKHis_v1`` folder): ``magnification``, one magnification per site; ``dirichlet``,
  label skew over the pooled images (``task=classification`` only). ``task``: ``super_resolution``
  (the paper's use, default) or ``classification``.
- ``vqa-rad`` (the folder with ``VQA_RAD Dataset Public.json`` and its image folder), ``slake`` (the
  ``Slake1.0`` folder: ``train.json``, ``validate.json``, ``test.json``, ``imgs/``) and ``vqa-rad,slake``
  (``input`` = the two folders, comma-separated; one answer list and one vocabulary for all sites):
  ``source``, one site per source (default, except for ``slake`` alone); ``modality``, SLAKE one site per
  imaging modality.
- ``nifti`` (a folder in the Medical Segmentation Decathlon layout, ``imagesTr/<case>.nii.gz`` and optional
  ``labelsTr/<case>.nii.gz``, ``dataset.json``; or a folder of such folders): ``folder``, one site per
  folder; ``random``, the cases dealt at random into ``num_sites`` sites. Segmentation with labels,
  super-resolution without.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import PathLike

from .layout import SPLITS, datalist_path, find_sites, replaced_atomically, write_datalist
from .readers import (
    BRATS_SEQUENCES,
    _rel,
    brats_cases,
    read_brats,
    read_breakhis,
    read_medmnist,
    read_nifti,
    read_vqa_sources,
)
from .validation import validate_datalist

__all__ = [
    "MANIFEST",
    "PARTITIONS",
    "TASKS",
    "PrepareError",
    "dirichlet_label_skew",
    "prepare",
    "prepare_command",
]

PARTITIONS = {
    "medmnist": ("subset", "dirichlet"),
    "fets": ("institution", "modality"),
    "brats": ("modality", "institution"),
    "breakhis": ("magnification", "dirichlet"),
    "vqa-rad": ("source",),
    "slake": ("modality", "source"),
    "vqa-rad,slake": ("source", "modality"),
    "nifti": ("folder", "random"),
}
TASKS = {  # the tasks each format can serve
    "medmnist": ("classification",),
    "fets": ("segmentation", "segmentation_3d"),
    "brats": ("segmentation", "segmentation_3d"),
    "breakhis": ("super_resolution", "classification"),
    "vqa-rad": ("vqa",),
    "slake": ("vqa",),
    "vqa-rad,slake": ("vqa",),
    "nifti": ("segmentation", "super_resolution", "segmentation_3d"),
}
MANIFEST = "prepare.json"  # at the output's root: what made it (and the mark that prepare may replace it)
VQA_RAD_JSON = "VQA_RAD Dataset Public.json"
VOLUME_TASK = "segmentation_3d"  # volumes (FeTS/BraTS, NIfTI) for the 3D segmentation bundle


class PrepareError(ValueError):
    """The input cannot be prepared; the message names the file (or the option) and the problem."""


def _as_list(value: Any) -> list[str]:
    """A comma-separated string or a sequence (Fire turns ``a,b`` into a tuple) as a list of strings."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _check_options(num_sites: Any, least: int, alpha: Any = 1.0) -> None:
    if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < least:
        raise PrepareError(f"--num_sites must be an integer >= {least}, got {num_sites!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise PrepareError(f"--alpha must be a positive number, got {alpha!r}.")


def dirichlet_label_skew(
    labels: Sequence[int], splits: Sequence[str], num_sites: int, alpha: float, seed: int = 0
) -> np.ndarray:
    """The site (``0 .. num_sites - 1``) of every item under Dirichlet label skew.

    Each class ``c`` draws its proportions over the sites, ``p_c ~ Dir(alpha * 1)``; within each split the
    class's items (shuffled) are cut by those proportions, so a site's test items follow its training
    distribution. Smaller ``alpha``, stronger skew. Deterministic for ``seed``; the draw is repeated (up to
    100 times) until every site has a training item.
    """
    _check_options(num_sites, 2, alpha)
    labels, splits = np.asarray(labels), np.asarray(splits)
    rng, classes = np.random.default_rng(seed), np.unique(labels)
    for _ in range(100):
        proportions = rng.dirichlet([float(alpha)] * num_sites, size=len(classes))
        site = np.full(len(labels), -1)
        for split in np.unique(splits):
            for c, p in zip(classes, proportions, strict=True):
                index = rng.permutation(np.flatnonzero((labels == c) & (splits == split)))
                cuts = np.round(np.cumsum(p)[:-1] * len(index)).astype(int)
                for k, part in enumerate(np.split(index, cuts)):
                    site[part] = k
        if len(np.unique(site[splits == "training"])) == num_sites:
            return site
    raise PrepareError(
        f"no Dirichlet({alpha}) draw gave each of the {num_sites} sites a training item; "
        "raise --alpha or lower --num_sites."
    )


def _dirichlet_sites(root: Path, task: str, prefix: str, num_sites: int, alpha: float, seed: int) -> None:
    """Re-deal the classification sites a reader wrote under ``root`` into ``<prefix>_site<k>`` sites."""
    if task != "classification":
        raise PrepareError(
            f"--partition dirichlet skews class labels: it needs task classification, not {task}."
        )
    sources = find_sites(root, task)
    metas = {s: json.loads(datalist_path(f, task).read_text()) for s, f in sources.items()}
    if len({tuple(m["classes"]) for m in metas.values()}) > 1:
        raise PrepareError(
            f"--partition dirichlet needs one label space, got {len(metas)} with different classes "
            f"({', '.join(metas)}): prepare one MedMNIST subset at a time."
        )
    items = [
        (Path(sources[s]), split, item) for s, m in metas.items() for split in SPLITS for item in m[split]
    ]
    site = dirichlet_label_skew(
        [i["label"] for *_, i in items], [i[1] for i in items], num_sites, alpha, seed
    )
    first = next(iter(metas.values()))
    modality = ", ".join(sorted({m["modality"] for m in metas.values()}))
    for folder in sources.values():  # images the reader wrote (MedMNIST) stay in their folder
        datalist_path(folder, task).unlink()
        if not any(Path(folder).iterdir()):
            Path(folder).rmdir()
    for k in range(num_sites):
        folder = root / f"{prefix}_site{k + 1}"
        folder.mkdir()
        chosen = [(f, split, item) for (f, split, item), j in zip(items, site, strict=True) if j == k]
        content = {
            "site": folder.name,
            "modality": modality,
            "task": task,
            "description": f"{first['description']} Dirichlet({alpha}) label skew over {num_sites} sites, "
            f"seed {seed}, within each split.",
            "classes": first["classes"],
            **{
                s: [
                    {**item, "image": _rel(f / item["image"], folder)}
                    for f, split, item in chosen
                    if split == s
                ]
                for s in SPLITS
            },
        }
        write_datalist(folder, task, content)


def _rename_task(root: Path, task: str, new_task: str) -> None:
    """Every site's ``<task>.json`` becomes ``<new_task>.json`` (its ``task`` field too)."""
    if task != "segmentation":
        raise PrepareError(f"--task {new_task} takes segmentation volumes, not {task}.")
    for folder in find_sites(root, task).values():
        content = json.loads(datalist_path(folder, task).read_text())
        write_datalist(folder, new_task, {**content, "task": new_task})
        datalist_path(folder, task).unlink()


def _grey_copies(folder: Path, task: str) -> None:
    """List grey copies (``<folder>/grey/<n>_<name>.png``) in place of the site's colour 2D images."""
    from PIL import Image, UnidentifiedImageError

    path, copies = datalist_path(folder, task), {}
    content = json.loads(path.read_text())
    for item in (i for split in SPLITS for i in content[split]):
        if isinstance(item["image"], list) or item["image"].lower().endswith((".nii", ".nii.gz", ".dcm")):
            continue
        source = (folder / item["image"]).resolve()
        if source not in copies:
            try:
                with Image.open(source) as image:
                    if image.mode in ("L", "I", "I;16", "F", "1"):
                        copies[source] = item["image"]
                        continue
                    target = folder / "grey" / f"{len(copies):06d}_{source.stem}.png"
                    target.parent.mkdir(exist_ok=True)
                    image.convert("L").save(target)
            except (OSError, UnidentifiedImageError) as err:
                raise PrepareError(f"{source}: cannot read it as an image ({err}).") from None
            copies[source] = target.relative_to(folder).as_posix()
        item["image"] = copies[source]
    write_datalist(folder, task, content)


def _one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
    if len(found) != 1:
        raise PrepareError(f"{folder}: expected one {what}, found {len(found)} ({pattern}).")
    return found[0]


def _vqa_rad_files(folder: Path) -> tuple[Path, Path]:
    """VQA-RAD's release: ``VQA_RAD Dataset Public.json`` (or the folder's one JSON file) and the image
    folder (``VQA_RAD Image Folder``, or the folder's one sub-folder)."""
    json_file = (
        folder / VQA_RAD_JSON if (folder / VQA_RAD_JSON).is_file() else _one(folder, "*.json", "JSON file")
    )
    named = folder / "VQA_RAD Image Folder"
    return json_file, named if named.is_dir() else _one(folder, "*/", "image folder")


def _slake_files(folder: Path) -> tuple[Path, Path]:
    """SLAKE's release folder (``train.json``, ``validate.json``, ``test.json``) and its ``imgs`` folder."""
    if not (folder / "imgs").is_dir():
        raise FileNotFoundError(f"{folder / 'imgs'}: folder not found (SLAKE's image folder).")
    return folder, folder / "imgs"


def _read(
    fmt: str, inputs: list[Path], root: Path, partition: str, opts: dict[str, Any], seed: int
) -> dict[str, Any]:
    """Run the format's reader into ``root``; return its summary."""
    input_dir = inputs[0]
    if fmt == "medmnist":
        summary = read_medmnist(input_dir, root, max_per_split=opts["max_per_split"], seed=seed)
        if partition == "dirichlet":
            if len(summary["sites"]) != 1:
                raise PrepareError(
                    f"{input_dir}: --partition dirichlet deals one MedMNIST subset over sites, found "
                    f"{len(summary['sites'])} ({', '.join(summary['sites'])}); point --input at one .npz file."
                )
            _dirichlet_sites(root, "classification", next(iter(summary["sites"])), **opts["dirichlet"])
        return summary
    if fmt in ("fets", "brats"):
        if partition == "institution":
            csv_file = Path(opts["partition_csv"] or input_dir / "partitioning_1.csv")
            if not csv_file.is_file():
                raise FileNotFoundError(
                    f"{csv_file}: partitioning CSV not found (FeTS2022 ships partitioning_1.csv and "
                    "partitioning_2.csv); pass --partition_csv."
                )
            modality = _as_list(opts["modality"] or "flair")
            if len(modality) != 1:
                raise PrepareError(f"--modality: one sequence for --partition institution, got {modality}.")
            return read_brats(input_dir, root, csv_file, modality[0], seed=seed)
        sequences = _as_list(opts["modality"] or BRATS_SEQUENCES)
        unknown = sorted(set(sequences) - set(BRATS_SEQUENCES))
        if unknown or len(set(sequences)) != len(sequences):
            raise PrepareError(
                f"--modality: distinct sequences among {list(BRATS_SEQUENCES)}, got {sequences}."
            )
        cases = brats_cases(input_dir)
        if len(cases) < len(sequences):
            raise PrepareError(
                f"{input_dir}: {len(cases)} cases, fewer than the {len(sequences)} sequence sites."
            )
        order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
        groups = {f"brats_{s}": sorted(order[k :: len(sequences)]) for k, s in enumerate(sequences)}
        return read_brats(
            input_dir, root, modality={g: g[len("brats_") :] for g in groups}, seed=seed, partitions=groups
        )
    if fmt == "breakhis":
        task = opts["task"] or "super_resolution"
        summary = read_breakhis(input_dir, root, task=task, seed=seed)
        if partition == "dirichlet":
            _dirichlet_sites(root, task, "breakhis", **opts["dirichlet"])
        return summary
    if fmt in ("vqa-rad", "slake", "vqa-rad,slake"):
        names = fmt.split(",")
        if len(inputs) != len(names):
            raise PrepareError(
                f"--format {fmt} takes {len(names)} input folder(s) (comma-separated), got {len(inputs)}."
            )
        found = dict(zip(names, inputs, strict=True))
        return read_vqa_sources(
            root,
            vqa_rad=_vqa_rad_files(found["vqa-rad"]) if "vqa-rad" in found else None,
            slake=_slake_files(found["slake"]) if "slake" in found else None,
            slake_by_modality=partition == "modality",
            seed=seed,
        )
    # nifti: the input itself in the Decathlon layout, or its sub-folders that are
    if (input_dir / "imagesTr").is_dir():
        folders = {input_dir.resolve().name: input_dir}
    else:
        folders = {p.name: p for p in sorted(input_dir.iterdir()) if (p / "imagesTr").is_dir()}
        if not folders:
            raise FileNotFoundError(
                f"{input_dir / 'imagesTr'}: folder not found, nor any <site>/imagesTr (expected the Medical "
                "Segmentation Decathlon layout imagesTr/<case>.nii.gz, optionally labelsTr/<case>.nii.gz)."
            )
    num_sites = opts["dirichlet"]["num_sites"] if partition == "random" else None
    modality = ", ".join(_as_list(opts["modality"])) if opts["modality"] else None
    task = "segmentation" if opts["task"] == VOLUME_TASK else opts["task"]
    return read_nifti(folders, root, task=task, modality=modality, num_sites=num_sites, seed=seed)


def prepare(
    format: str,
    input: PathLike | Sequence[PathLike],
    output: PathLike,
    partition: str | None = None,
    seed: int = 0,
    num_sites: int = 4,
    alpha: float = 0.5,
    task: str | None = None,
    modality: str | Sequence[str] | None = None,
    partition_csv: PathLike | None = None,
    max_per_split: int | None = None,
    check_images: bool = True,
    grey: bool = False,
) -> dict[str, Any]:
    """Turn a downloaded dataset (or a folder of NIfTI images) into sites; return the summary.

    Args:
        format: ``medmnist``, ``fets``, ``brats``, ``breakhis``, ``vqa-rad``, ``slake``, ``vqa-rad,slake`` or
            ``nifti`` (see the module docstring for the folder each one reads).
        input: the downloaded folder (for ``vqa-rad,slake``: two folders, comma-separated).
        output: the sites' root folder; replaced as a whole when it holds an earlier ``prepare`` output,
            refused when it holds anything else.
        partition: how items become sites (``PARTITIONS[format]``; default its first).
        seed: splits the dataset does not ship, and every random partition, are drawn from it.
        num_sites: sites of a ``dirichlet`` or ``random`` partition.
        alpha: the Dirichlet concentration of ``dirichlet`` (smaller: more skewed class proportions).
        task: ``breakhis``: ``super_resolution`` (default) or ``classification``; ``nifti``:
            ``segmentation`` (default with labels) or ``super_resolution``; ``fets``, ``brats``, ``nifti``:
            ``segmentation_3d`` writes the segmentation datalists for the whole-volume (3D) bundle.
        modality: ``fets``/``brats``: the sequence (``institution``) or sequences (``modality``);
            ``nifti``: the sites' modality tag (default from ``dataset.json``).
        partition_csv: FeTS2022's partitioning CSV (default ``<input>/partitioning_1.csv``).
        max_per_split: ``medmnist``: keep a seeded random subset of each shipped split.
        check_images: read every listed file (header and data) before the output is put in place.
        grey: colour images (BreaKHis, SLAKE, MedMNIST's colour subsets) are listed as grey copies written
            into their site's ``grey/`` folder (ITU-R 601 luma, as Pillow's ``convert("L")``), for the
            bundles' one-channel networks; grey images and volumes stay as they are.

    Returns:
        ``{"format", "partition", "task", "output", "sites": {site: {"training", "validation", "test",
        "modality"}}}``, also written as ``<output>/prepare.json``.
    """
    fmt = ",".join(_as_list(format)).lower()
    if fmt not in PARTITIONS:
        raise PrepareError(f"--format must be one of {list(PARTITIONS)}, got {format!r}.")
    partition = partition or PARTITIONS[fmt][0]
    if partition not in PARTITIONS[fmt]:
        raise PrepareError(
            f"--partition for {fmt} must be one of {list(PARTITIONS[fmt])}, got {partition!r}."
        )
    inputs = [Path(p) for p in (_as_list(input) if fmt == "vqa-rad,slake" else [str(input)])]
    for path in inputs:
        if not path.exists():
            raise FileNotFoundError(f"{path}: input not found.")
        if fmt != "medmnist" and not path.is_dir():
            raise PrepareError(f"{path}: not a folder (--format {fmt} reads a folder).")
    out = Path(output)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise PrepareError(f"{out}: exists and is not an earlier prepare output; choose a new --output.")
    for path in inputs:
        if out.resolve() == path.resolve() or out.resolve() in path.resolve().parents:
            raise PrepareError(f"{out}: --output must not contain the --input {path} (it is replaced).")
    opts = {
        "task": task,
        "modality": modality,
        "partition_csv": partition_csv,
        "max_per_split": max_per_split,
        "dirichlet": {"num_sites": num_sites, "alpha": alpha, "seed": seed},
    }
    if task is not None and task not in TASKS[fmt]:
        raise PrepareError(f"--task for {fmt} must be one of {list(TASKS[fmt])}, got {task!r}.")
    if partition == "dirichlet" and (task or TASKS[fmt][0]) != "classification":
        raise PrepareError("--partition dirichlet skews class labels: it needs --task classification.")
    if partition in ("dirichlet", "random"):  # checked before anything is read
        _check_options(num_sites, 2 if partition == "dirichlet" else 1, alpha)
    with replaced_atomically(out) as root:
        try:
            summary = _read(fmt, inputs, root, partition, opts, seed)
            if task == VOLUME_TASK:  # the same datalists, for the whole-volume bundle
                _rename_task(root, summary["task"], VOLUME_TASK)
            task_name = task if task == VOLUME_TASK else summary["task"]
            if grey:
                for folder in find_sites(root, task_name).values():
                    _grey_copies(Path(folder), task_name)
            sites = {}
            for site, folder in find_sites(root, task_name).items():
                path = datalist_path(folder, task_name)
                content = json.loads(path.read_text())
                if not content["training"]:
                    raise PrepareError(
                        f"{', '.join(map(str, inputs))}: site {site} gets no training item "
                        f"({len(content['validation'])} validation, {len(content['test'])} test); "
                        "choose another --partition."
                    )
                checked = validate_datalist(path, task_name, check_images=check_images)
                sites[site] = {**checked["items"], "modality": content["modality"]}
        except (ValueError, OSError) as err:  # name the file where it will be, not in the folder being built
            raise PrepareError(_message(err).replace(str(root), str(out))) from err
        manifest = {
            "format": fmt,
            "partition": partition,
            "task": task_name,
            "seed": seed,
            **({"num_sites": num_sites} if partition in ("dirichlet", "random") else {}),
            **({"alpha": alpha} if partition == "dirichlet" else {}),
            "grey": grey,
            "input": [str(p.resolve()) for p in inputs],
            "sites": sites,
        }
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return {**manifest, "output": str(out)}


def summary_table(summary: Mapping[str, Any]) -> str:
    """The sites and their split sizes, as the command prints them."""
    rows = [(site, *(str(v[s]) for s in SPLITS), v["modality"]) for site, v in summary["sites"].items()]
    head = ("site", *SPLITS, "modality")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [head, *rows]
    ]
    title = (
        f"{summary['output']}: {len(rows)} {summary['task']} site(s) from {summary['format']}, "
        f"partition {summary['partition']}"
    )
    tags = sorted({v["modality"] for v in summary["sites"].values()})
    hint = (
        f"modality tags {json.dumps(tags)}: with --strategy omnifm, pass them as the bundle's "
        "`modalities` (and the strategy's) when the bundle's list lacks them"
    )
    return "\n".join([title, *lines, hint])


def _message(err: BaseException) -> str:
    """One line naming the file and the problem (an OSError's own message puts the file last)."""
    message = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) and err.filename else str(err)
    return message.strip().splitlines()[0] if message.strip() else type(err).__name__


def prepare_command(*args: Any, **kwargs: Any) -> None:
    """``python -m omnifm_monai.data prepare``: :func:`prepare`, then the sites and their split sizes; a
    problem with the input ends it with one line ``error: <file>: <problem>`` and exit status 1, nothing
    written."""
    # notices a user cannot act on: no GPU DICOM decoder (pydicom's own decoders read the files)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
    try:
        summary = prepare(*args, **kwargs)
    except (ValueError, OSError) as err:  # DataValidationError and PrepareError are ValueErrors
        raise SystemExit(f"error: {_message(err)}") from None
    print(summary_table(summary))


# --help lists prepare's arguments; Fire binds the flags to this signature
prepare_command.__signature__ = inspect.signature(prepare).replace(return_annotation=None)
prepare_command.__doc__ = f"{prepare_command.__doc__}\n\n{prepare.__doc__.split(chr(10) * 2, 1)[1]}"
