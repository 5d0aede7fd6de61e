"""The one site layout ``<root>/<site>/<task>.json``: paths, atomic pretty writes, site discovery."""

from __future__ import annotations

import json
import os

import pytest

from omnifm_monai.data import layout
from omnifm_monai.data.layout import TASKS, datalist_path, find_sites, write_datalist


def test_tasks_and_paths(tmp_path):
    assert TASKS == ("segmentation", "classification", "super_resolution", "vqa")
    assert datalist_path(tmp_path / "icbm_t1", "vqa") == tmp_path / "icbm_t1" / "vqa.json"
    assert datalist_path(str(tmp_path), "segmentation") == tmp_path / "segmentation.json"
    with pytest.raises(ValueError, match="task"):
        datalist_path(tmp_path, "detection")


def test_write_datalist_is_the_builders_json(tmp_path):
    content = {
        "site": "a",
        "modality": "CT",
        "labels": {"0": "background"},
        "training": [{"image": "x.nii.gz"}],
    }
    path = write_datalist(tmp_path / "a", "segmentation", content)  # the site folder is created
    assert path == tmp_path / "a" / "segmentation.json"
    assert path.read_text() == json.dumps(content, indent=1)  # indent=1, no trailing newline, as built so far
    assert json.loads(path.read_text()) == content
    write_datalist(tmp_path / "a", "segmentation", {**content, "site": "b"})  # replaced
    assert json.loads(path.read_text())["site"] == "b"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["segmentation.json"]  # no temporary left


def test_write_datalist_is_atomic(tmp_path, monkeypatch):
    path = write_datalist(tmp_path, "classification", {"training": [1]})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(layout.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_datalist(tmp_path, "classification", {"training": [2]})
    assert json.loads(path.read_text()) == {"training": [1]}  # the old datalist is intact
    assert os.listdir(tmp_path) == ["classification.json"]  # and the temporary file is gone
    monkeypatch.undo()
    with pytest.raises(TypeError):  # content that is not JSON fails half-way through: nothing replaced either
        write_datalist(tmp_path, "classification", {"training": [object()]})
    assert json.loads(path.read_text()) == {"training": [1]} and os.listdir(tmp_path) == [
        "classification.json"
    ]


def test_find_sites(tmp_path):
    for site, tasks in (("b_site", TASKS), ("a_site", ("super_resolution",)), ("c_site", ("vqa",))):
        for task in tasks:
            write_datalist(tmp_path / site, task, {"training": []})
    (tmp_path / "empty").mkdir()
    (tmp_path / "segmentation.json").write_text("{}")  # a file at the root is not a site
    assert find_sites(tmp_path, "super_resolution") == {
        "a_site": str(tmp_path / "a_site"),
        "b_site": str(tmp_path / "b_site"),
    }
    assert list(find_sites(tmp_path, "super_resolution")) == ["a_site", "b_site"]  # sorted by name
    assert find_sites(str(tmp_path), "vqa") == {
        "b_site": str(tmp_path / "b_site"),
        "c_site": str(tmp_path / "c_site"),
    }
    with pytest.raises(ValueError, match="task"):
        find_sites(tmp_path, "detection")


@pytest.mark.parametrize("root", ["empty", "missing"])
def test_find_sites_without_sites_says_how_to_build_them(tmp_path, root):
    (tmp_path / "empty" / "site").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as e:
        find_sites(tmp_path / root, "classification")
    message = str(e.value)
    assert str(tmp_path / root) in message and "classification.json" in message
    assert "python -m omnifm_monai.data build_reference_sites" in message


def test_reference_sites_are_found_for_every_task(reference_sites):
    """The builder writes the layout: a site is found for exactly the tasks it was built with."""
    summary = json.loads((reference_sites / "sites.json").read_text())
    for task in TASKS:
        expected = sorted(site for site, info in summary["sites"].items() if task in info["tasks"])
        assert find_sites(reference_sites, task) == {site: str(reference_sites / site) for site in expected}
