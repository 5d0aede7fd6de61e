"""The federated-overhead benchmark's site set-up: sites beyond the reference ones reuse their data; no data is a
one-line error naming the folder and the command that builds it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fl_overhead  # noqa: E402


def test_site_dirs_reuse_the_reference_sites_in_order(tmp_path):
    for site in ("icbm_t1", "icbm_t2w"):
        (tmp_path / site).mkdir()
        (tmp_path / site / "segmentation.json").write_text("{}")
    (tmp_path / "colin_t1").mkdir()  # no segmentation datalist: not a site for this benchmark
    dirs = fl_overhead.site_dirs(tmp_path, 3)
    assert dirs == {
        "site1": str(tmp_path / "icbm_t1"),
        "site2": str(tmp_path / "icbm_t2w"),
        "site3": str(tmp_path / "icbm_t1"),
    }


def test_site_dirs_without_reference_data_names_the_folder(tmp_path):
    with pytest.raises(SystemExit) as err:
        fl_overhead.site_dirs(tmp_path / "missing", 2)
    assert str(tmp_path / "missing") in str(err.value)
    assert "build_reference_sites" in str(err.value)
