"""The one on-disk layout of site data: ``<root>/<site>/<task>.json``.

A *site* is a folder; it holds one datalist per task it serves, named after the task, next to the files the
datalists list (paths relative to the site folder). The reference-site builder and every reader write this
layout through :func:`write_datalist`; the bundles read ``@dataset_dir + '/' + @task + '.json'`` with
``dataset_dir`` a site folder, and :func:`find_sites` lists the sites of a root for one task.

A datalist is one JSON object: metadata (``site``, ``modality``, ``task``, ...; ``labels`` /
``classes`` / ``answers`` and ``vocabulary`` by task), then the ``training`` / ``validation`` / ``test``
item lists.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from monai.config import PathLike

__all__ = [
    "SPLITS",
    "TASKS",
    "VOLUME_TASKS",
    "datalist_path",
    "find_sites",
    "replaced_atomically",
    "write_datalist",
]

TASKS = ("segmentation", "classification", "super_resolution", "vqa")  # slice tasks, built by default
VOLUME_TASKS = ("segmentation_3d",)  # whole-volume tasks, built when asked for
SPLITS = ("training", "validation", "test")


def _check_task(task: str) -> str:
    if task not in TASKS + VOLUME_TASKS:
        raise ValueError(f"task must be one of {list(TASKS + VOLUME_TASKS)}, got {task!r}.")
    return task


def datalist_path(site_dir: PathLike, task: str) -> Path:
    """The datalist of ``task`` in a site folder: ``<site_dir>/<task>.json``."""
    return Path(site_dir) / f"{_check_task(task)}.json"


def write_datalist(site_dir: PathLike, task: str, content: dict[str, Any]) -> Path:
    """Write ``content`` as the ``task`` datalist of ``site_dir`` (created if missing); return its path.

    Atomic: the JSON (``indent=1``, as the reference sites have always been written) goes to a temporary
    file in the same folder, which then replaces the datalist, so a reader never sees a half-written file.
    """
    path = datalist_path(site_dir, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # one per writer
    try:
        with open(tmp, "w") as f:
            json.dump(content, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def find_sites(root: PathLike, task: str) -> dict[str, str]:
    """Every sub-folder of ``root`` holding a ``<task>.json``, sorted by name: site name -> folder path."""
    _check_task(task)
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    sites = {p.name: str(p) for p in folders if datalist_path(p, task).is_file()}
    if not sites:
        raise FileNotFoundError(
            f"no site under {root} has a {task}.json datalist; build the reference sites with "
            f"`python -m omnifm_monai.data build_reference_sites --output_dir {root}` or write them with a reader."
        )
    return sites


@contextlib.contextmanager
def replaced_atomically(output_dir: PathLike) -> Iterator[Path]:
    """A temporary folder beside ``output_dir`` to build in; when the block ends without error it replaces
    ``output_dir`` (the old folder is set aside first, then removed), otherwise it is removed. A reader never
    sees a half-built folder, and a failed build leaves the old one as it was."""
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.replace(old / out.name)
            tmp.replace(out)
            shutil.rmtree(old)
        else:
            tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
