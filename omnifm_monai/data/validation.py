"""Check a datalist and the files it lists before training starts.

Bad data otherwise surfaces as an obscure error deep inside a data loader worker, epochs in, at one
site of a federation. :func:`validate_datalist` reads every listed file (header and data) and raises
:class:`DataValidationError` naming the file and the problem. From a bundle config, use
:func:`check_datalist`, which returns the path it checked (``_target_`` needs no import; an
expression needs ``"imports": ["$import omnifm_monai", "$import omnifm_monai.data.validation"]``),
e.g. as the first entry of ``initialize``::

    "$omnifm_monai.data.validation.check_datalist(@datalist, 'segmentation', expected_channels=1)"

Validation only reads: it writes no file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from monai.config import PathLike

__all__ = [
    "DataValidationError",
    "REQUIRED_KEYS",
    "check_datalist",
    "check_inference_input",
    "check_settings",
    "inference_input_or_exit",
    "read_image",
    "root_cause",
    "validate_datalist",
]

SPLITS = ("training", "validation", "test")
REQUIRED_KEYS = {
    "segmentation": ("image", "label"),
    "segmentation_3d": ("image", "label"),
    "classification": ("image", "label"),
    "super_resolution": ("image",),
    "vqa": ("image", "question", "answer", "label"),
}


class DataValidationError(ValueError):
    """A datalist, or a file it lists, cannot be used; the message names the file and the problem."""


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:  # DICOM Part 10 files carry "DICM" after a 128-byte preamble
        return f.read(132)[128:] == b"DICM"


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    """Read one file fully (header and data); return the data and its channel count."""
    name = path.name.lower()
    kind = "NIfTI" if name.endswith((".nii", ".nii.gz")) else "DICOM" if _is_dicom(path) else "image"
    try:
        if kind == "NIfTI":
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)  # decompresses everything: catches truncated .nii.gz
            spatial = min(data.ndim, 3)  # as MONAI's NibabelReader: dims past the third are channels
            return data, int(np.prod(data.shape[spatial:], dtype=int))
        if kind == "DICOM":
            ds = pydicom.dcmread(path)
            return ds.pixel_array, int(getattr(ds, "SamplesPerPixel", 1))
        from monai.transforms import LoadImage  # other formats: the reader training will use

        data = np.asarray(LoadImage(image_only=True, ensure_channel_first=True)(str(path)))
        return data, int(data.shape[0])
    except Exception as e:
        raise DataValidationError(
            f"{path}: corrupt or truncated {kind} file, cannot read it ({type(e).__name__}: {e})"
        ) from e


def read_image(path: PathLike) -> tuple[np.ndarray, int]:
    """Read a NIfTI / DICOM / other image file, or a DICOM series folder; return (data, channels)."""
    path = Path(path)
    if not path.is_dir():
        return _read_file(path)
    slices = [_read_file(p) for p in sorted(path.iterdir()) if p.is_file() and _is_dicom(p)]
    if not slices:
        raise DataValidationError(f"{path}: folder holds no DICOM files, expected a DICOM series.")
    if len({s[0].shape for s in slices}) > 1:
        raise DataValidationError(
            f"{path}: DICOM series has slices of different shapes {sorted({s[0].shape for s in slices})}."
        )
    return np.stack([s[0] for s in slices], axis=-1), slices[0][1]


def _resolve(base: Path, value: Any, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DataValidationError(f"{where}: {key} must be a file path, got {value!r}.")
    path = Path(value) if Path(value).is_absolute() else base / value
    clean = Path(os.path.normpath(path))  # "site/../../data/x.png" named as "data/x.png" when it is that file
    path = clean if clean.resolve() == path.resolve() else path
    if not path.exists():
        raise DataValidationError(f"{where}: {key} file not found: {path}")
    return path


def _check_index(item: dict, where: str, names: list | None, what: str, count: int | None = None) -> None:
    label = item["label"]
    if isinstance(label, bool) or not isinstance(label, int):
        raise DataValidationError(f"{where}: label {label!r} is not an integer {what} index.")
    count = len(names) if names is not None else count
    if label < 0 or (count is not None and label >= count):
        plural = "classes" if what == "class" else f"{what}s"
        raise DataValidationError(f"{where}: label {label} out of range for {count} {plural}.")
    if (
        what == "answer"
        and names is not None
        and "answer" in item
        and str(names[label]) != str(item["answer"])
    ):
        raise DataValidationError(
            f"{where}: label {label} is answer {names[label]!r} but answer is {item['answer']!r}."
        )


def _label_values(labels: Any) -> set[int] | None:
    """Label values a datalist declares: ``{"0": "background", ...}`` or ``{"background": 0, ...}``."""
    for values in (labels.keys(), labels.values()) if isinstance(labels, dict) else ():
        try:
            return {int(v) for v in values}
        except (TypeError, ValueError):
            continue
    return None


def _check_label_map(path: Path, where: str, allowed: set[int] | None) -> None:
    data = read_image(path)[0]
    if np.issubdtype(data.dtype, np.floating) and not (
        np.isfinite(data).all() and (data == np.round(data)).all()
    ):
        raise DataValidationError(
            f"{where}: label map {path} has non-integer values (labels must be integers)."
        )
    values = {int(v) for v in np.unique(data)}
    if allowed is not None and not values <= allowed:
        raise DataValidationError(
            f"{where}: label map {path} has values {sorted(values - allowed)} not in the labels {sorted(allowed)}."
        )


_VALIDATED: set[tuple] = set()  # fingerprints of datalists whose files were read and passed


def _stats(files: list[Path]) -> str:
    """A digest of the files' resolved paths, sizes and modification times."""
    digest = hashlib.sha1()
    for f in files:
        st = f.stat()
        digest.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _check_item(
    where: str, image_paths: list[Path], label_path: Path | None, expected_channels: int | None, allowed
) -> None:
    """Read one item's files: readable, finite, the expected channels, label values declared."""
    channels = 0
    for p in image_paths:
        data, ch = read_image(p)
        channels += ch
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise DataValidationError(f"{where}: image {p} contains NaN or Inf values.")
    if expected_channels is not None and channels != expected_channels:
        raise DataValidationError(
            f"{where}: image {', '.join(map(str, image_paths))} has {channels} channels, expected {expected_channels}."
        )
    if label_path is not None:
        _check_label_map(label_path, where, allowed)


def validate_datalist(
    datalist_path: PathLike,
    task: str,
    base_dir: PathLike | None = None,
    check_images: bool = True,
    expected_channels: int | None = None,
    max_items: int | None = None,
    num_classes: int | None = None,
    label_values: Sequence[int] | None = None,
) -> dict:
    """Validate a datalist in the common form and the files it lists; raise :class:`DataValidationError`.

    Args:
        datalist_path: the datalist JSON (``training`` must be non-empty; ``validation``/``test`` optional).
        task: ``segmentation``, ``segmentation_3d``, ``classification``, ``super_resolution`` or ``vqa`` (sets
            the required keys).
        base_dir: folder relative paths start from; default the datalist's folder.
        check_images: read each file's header and data (corruption, NaN/Inf, channels, label values);
            otherwise only check that the files exist.
        expected_channels: channels every image must have (a list of files counts their sum).
        max_items: read at most this many items per split (existence is checked for all).
        num_classes: the classes the bundle's network predicts: label values (segmentation) or indices
            (classification) must lie in ``[0, num_classes)``, whether or not the datalist declares them.
        label_values: segmentation label values as stored, in class order, when the bundle maps them to
            ``[0, num_classes)`` (BraTS's ``[0, 1, 2, 4]``): label maps must hold only these values.

    Returns:
        ``{"datalist": path, "task": task, "items": {split: n}, "files_read": n}`` (the files checked; they
        are read once per process while none of them changes).
    """
    if task not in REQUIRED_KEYS:
        raise ValueError(f"task must be one of {sorted(REQUIRED_KEYS)}, got {task!r}.")
    path = Path(datalist_path)
    if not path.is_file():
        raise DataValidationError(f"{path}: datalist file not found.")
    try:
        with open(path, encoding="utf-8") as f:
            datalist = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataValidationError(f"{path}: unreadable JSON, not a valid datalist ({e}).") from e
    if (
        not isinstance(datalist, dict)
        or not isinstance(datalist.get("training"), list)
        or not datalist["training"]
    ):
        raise DataValidationError(f"{path}: the 'training' list is missing or empty.")
    base = Path(base_dir) if base_dir is not None else path.parent
    allowed = _label_values(datalist.get("labels"))
    if num_classes is not None or label_values is not None:
        stored = set(label_values) if label_values is not None else set(range(num_classes))
        if allowed is not None and not allowed <= stored:
            raise DataValidationError(
                f"{path}: declared labels {sorted(allowed)} do not fit the network's label values {sorted(stored)}."
            )
        allowed = allowed if allowed is not None else stored
    counts, to_read = {}, []
    for split in SPLITS:
        items = datalist.get(split) or []
        if not isinstance(items, list):
            raise DataValidationError(
                f"{path}: '{split}' must be a list of items, got {type(items).__name__}."
            )
        for i, item in enumerate(items):
            where = f"{path}: {split}[{i}]"
            missing = [k for k in REQUIRED_KEYS[task] if not isinstance(item, dict) or k not in item]
            if missing:
                raise DataValidationError(f"{where} is missing required key(s) {missing} for task {task!r}.")
            images = item["image"] if isinstance(item["image"], list) else [item["image"]]
            image_paths = [_resolve(base, p, where, "image") for p in images]
            label_path = (
                _resolve(base, item["label"], where, "label") if task.startswith("segmentation") else None
            )
            if task in ("classification", "vqa"):
                names = datalist.get("classes" if task == "classification" else "answers")
                what = "class" if task == "classification" else "answer"
                _check_index(item, where, names, what, num_classes if task == "classification" else None)
            if check_images and (max_items is None or i < max_items):
                to_read.append((where, image_paths, label_path))
        counts[split] = len(items)
    # every workflow of a site (training, evaluation, each federated round's rebuild) checks the same files:
    # read them once per process while neither the datalist nor any file changed (size and mtime)
    files = [path] + [p for _, images, label in to_read for p in (*images, label) if p is not None]
    fingerprint = (
        task,
        str(base.resolve()),
        expected_channels,
        max_items,
        check_images,
        num_classes,
        tuple(label_values or ()),
        _stats(files),
    )
    if fingerprint not in _VALIDATED:
        for where, image_paths, label_path in to_read:
            _check_item(where, image_paths, label_path, expected_channels, allowed)
        _VALIDATED.add(fingerprint)
    n_read = sum(len(images) + (label is not None) for _, images, label in to_read)
    return {"datalist": str(path), "task": task, "items": counts, "files_read": n_read}


def check_datalist(
    datalist_path: PathLike,
    task: str,
    base_dir: PathLike | None = None,
    check_images: bool = True,
    expected_channels: int | None = None,
    max_items: int | None = None,
    num_classes: int | None = None,
    label_values: Sequence[int] | None = None,
) -> str:
    """:func:`validate_datalist`, then return ``datalist_path``: a drop-in for a bundle config's datalist id."""
    validate_datalist(
        datalist_path, task, base_dir, check_images, expected_channels, max_items, num_classes, label_values
    )
    return str(datalist_path)


def check_inference_input(path: PathLike, channels: int = 1) -> None:
    """Refuse an inference input the bundle cannot use, with :class:`DataValidationError` naming the file.

    The input is read as the bundle will read it (MONAI's ``LoadImage`` with
    :class:`~omnifm_monai.data.dicom.ClinicalDicomReader`, channel first; a DICOM series folder as one volume;
    a multi-frame DICOM as a volume of its frames; a colour DICOM as grey) and reoriented as the bundle will
    (:class:`~omnifm_monai.transforms.PlaneOrientation` to RAS; a single slice of any plane stays one slice).
    Refused: a missing or empty file, a file no reader can decode (truncated, no pixel data), more than 3
    spatial dimensions, a channel count other than ``channels`` (a colour PNG / JPEG / TIFF: convert it to
    grey first; a 4D NIfTI: choose one volume), NaN or Inf values, a constant image (nothing to segment or
    classify), and an image whose affine cannot be reoriented.
    """
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: no such file or folder.")
    if path.is_file() and path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty (0 bytes).")
    from monai.transforms import LoadImage

    from omnifm_monai.data.dicom import ClinicalDicomReader
    from omnifm_monai.transforms.planar import PlaneOrientation

    try:
        image = LoadImage(reader=ClinicalDicomReader, image_only=True, ensure_channel_first=True)(str(path))
    except Exception as err:
        raise DataValidationError(f"{path}: cannot be read as an image ({root_cause(err)}).") from None
    data = np.asarray(image)
    if data.ndim - 1 > 3:
        raise DataValidationError(
            f"{path}: {data.ndim - 1} spatial dimensions {data.shape[1:]}; at most 3 are supported."
        )
    if data.shape[0] != channels:
        hint = " (colour: convert it to grey first)" if data.shape[0] in (3, 4) else " (choose one volume)"
        raise DataValidationError(f"{path}: {data.shape[0]} channels, the bundle expects {channels}{hint}.")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise DataValidationError(f"{path}: the image holds NaN or Inf values.")
    if data.size == 0 or data.min() == data.max():
        raise DataValidationError(
            f"{path}: the image is constant ({data.flat[0] if data.size else 'empty'} everywhere)."
        )
    try:  # every bundle reorients to RAS (a single slice within its own plane)
        PlaneOrientation(axcodes="RAS")(image)
    except Exception as err:
        raise DataValidationError(
            f"{path}: its orientation cannot be brought to RAS ({root_cause(err)})."
        ) from None


def root_cause(err: BaseException) -> str:
    """The innermost exception of a chain as one line (MONAI's reader and config layers wrap the one that
    names the file and the problem)."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def inference_input_or_exit(path: PathLike, channels: int = 1) -> PathLike:
    """:func:`check_inference_input` for a bundle's ``initialize``: a refused input ends the run with one line
    on stderr and exit status 1, before the network, the checkpoint or any output is touched."""
    try:
        check_inference_input(path, channels)
    except DataValidationError as err:
        raise SystemExit(f"error: {err}") from None
    return path


def check_settings(**settings: Any) -> None:
    """Refuse training settings that are not positive numbers (``learning_rate``: any number; the others:
    integers), naming the setting, before any handler writes a file: a bundle's first ``initialize`` entry.
    ``--max_epochs abc`` on the command line otherwise fails epochs later, inside the trainer."""
    for name, value in settings.items():
        integer = name != "learning_rate"
        kinds = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
            kind = "integer" if integer else "number"
            raise DataValidationError(f"the setting {name} must be a positive {kind}, got {value!r}.")
