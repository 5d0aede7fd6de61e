"""Benchmark report: tables equal an independent computation from the results CSV."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402
import run  # noqa: E402

SITES = ("icbm_t1", "icbm_t2w")
STRATEGIES = ("local", "fedavg", "omnifm", "centralized")
SEEDS = (0, 1, 2)


@pytest.fixture()
def results(tmp_path):
    """Random test Dice per (strategy, seed, site), Centralized the highest; two validation rounds."""
    rng = np.random.default_rng(0)
    values = {(s, seed, site): float(rng.uniform(0.3, 0.7) + (0.3 if s == "centralized" else 0))
              for s in STRATEGIES for seed in SEEDS for site in SITES}  # fmt: skip
    rows = []
    for (s, seed, site), v in values.items():
        cell = run.Cell("segmentation", "cross_modality", s, "scratch", seed)
        base = dict(zip(run.CELL_FIELDS, cell.key, strict=True))
        rows += [
            {
                **base,
                "round": 1,
                "site": site,
                "split": "test",
                "metric": "mean_dice",
                "value": v,
                "commit": "abc",
            },
            {
                **base,
                "round": 1,
                "site": site,
                "split": "test",
                "metric": "hd95",
                "value": 9.0,
                "commit": "abc",
            },
        ]
        rows += [{**base, "round": r, "site": site, "split": "validation", "metric": "mean_dice", "value": v * r / 2, "commit": "abc"}
                 for r in (0, 1)]  # fmt: skip
        if site == SITES[0]:
            rows += [{**base, "round": r, "site": "server", "split": "round", "metric": "seconds", "value": 2.0, "commit": "abc"}
                     for r in (0, 1)]  # fmt: skip
            rows += [{**base, "round": r, "site": x, "split": "round", "metric": "upload_bytes", "value": 1e6, "commit": "abc"}
                     for r in (0, 1) for x in SITES]  # fmt: skip
    path = tmp_path / "r.csv"
    run.append(path, rows)
    return path, values


def _cell_text(table: list[str], strategy: str) -> list[str]:
    row = next(line for line in table if line.startswith(f"| {report.name(strategy)} |"))
    return [c.strip() for c in row.strip("|").split("|")][1:]


def test_scenario_table_matches_numpy_and_bolds_the_best(results):
    path, values = results
    res = report.Results(path, {"segmentation": "mean_dice"})
    table = report.scenario_table(res, "segmentation", "cross_modality", STRATEGIES)
    for s in STRATEGIES:
        per_seed = [np.mean([values[(s, seed, site)] for site in SITES]) for seed in SEEDS]
        cells = _cell_text(table, s)
        assert cells[2].strip("*") == f"{np.mean(per_seed):.3f} ± {np.std(per_seed, ddof=1):.3f}"
        assert (
            cells[0].strip("*").startswith(f"{np.mean([values[(s, seed, SITES[0])] for seed in SEEDS]):.3f}")
        )
        assert cells[3:] == ["2.0", "2.00"]  # s/round, MB/round (two sites x 1 MB)
    best = max(
        STRATEGIES, key=lambda s: np.mean([values[(s, seed, site)] for seed in SEEDS for site in SITES])
    )
    assert [s for s in STRATEGIES if _cell_text(table, s)[2].startswith("**")] == [best]


def test_margin_is_against_the_best_non_centralized_baseline(results):
    path, values = results
    res = report.Results(path, {"segmentation": "mean_dice"})
    m = report.margin(res, "segmentation", "cross_modality")
    mean = {s: np.mean([values[(s, seed, site)] for seed in SEEDS for site in SITES]) for s in STRATEGIES}
    best = max(("local", "fedavg"), key=mean.get)
    assert m["best"] == best and m["margin"] == pytest.approx(mean["omnifm"] - mean[best])
    assert m["centralized"][0] == pytest.approx(mean["centralized"])


def test_report_writes_tables_and_plots(results, tmp_path):
    path, _ = results
    suite = run.load_suite("quick")
    md = report.write_report(suite, path, tmp_path / "out" / "report.md", tmp_path / "out" / "plots")
    text = md.read_text()
    assert "## segmentation" in text and "## classification" not in text  # only tasks with results
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((md.parent / link).stat().st_size > 1000 for link in links)


def test_readme_block_is_replaced_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmark:start -->\nold table\n<!-- benchmark:end -->\nlicence\n")
    report.update_readme(readme, ["| new |", "|---|"])
    assert (
        readme.read_text()
        == "intro\n<!-- benchmark:start -->\n| new |\n|---|\n<!-- benchmark:end -->\nlicence\n"
    )
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(ValueError, match="plain.md"):
        report.update_readme(tmp_path / "plain.md", ["x"])
