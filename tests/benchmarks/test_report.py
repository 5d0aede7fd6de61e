"""Benchmark report: tables equal an independent computation from a synthetic results CSV."""

from __future__ import annotations

import logging
import math
import re
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import diagnostics  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402

SITES = ("icbm_t1", "icbm_t2w")
STRATEGIES = ("local", "fedavg", "omnifm", "centralized")
SEEDS = (0, 1, 2)


def cell_rows(task, scenario, strategy, seed, *, test=(), curve=(), metric="mean_dice", init="scratch", cost=True,
              diag=(), meta=()):  # fmt: skip
    """Rows of one cell: ``test`` {metric: {site: value}}, ``curve`` [{site: value} per round] of ``metric``,
    ``diag`` {metric: [{site: value} per round]}, ``meta`` {metric: string}; seconds and upload bytes per round."""
    base = dict(zip(run.CELL_FIELDS, (task, scenario, strategy, init, seed), strict=True), commit="abc")

    def row(r, site, split, m, v):
        return {**base, "round": r, "site": site, "split": split, "metric": m, "value": v}

    rounds = max(len(curve), 1)
    out = [
        row(rounds - 1, site, "test", m, v) for m, sites in dict(test).items() for site, v in sites.items()
    ]
    out += [
        row(r, site, "validation", metric, v) for r, sites in enumerate(curve) for site, v in sites.items()
    ]
    out += [row(r, site, "diagnostics", m, v) for m, per_round in dict(diag).items()
            for r, sites in enumerate(per_round) for site, v in sites.items()]  # fmt: skip
    out += [row(-1, "server", "meta", m, v) for m, v in dict(meta).items()]
    if cost:
        out += [row(r, "server", "round", "seconds", 2.0) for r in range(rounds)]
        out += [row(r, site, "round", "upload_bytes", 1e6) for r in range(rounds) for site in SITES]
    return out


@pytest.fixture()
def results(tmp_path):
    """Random test Dice per (strategy, seed, site), Centralized the highest; two validation rounds."""
    rng = np.random.default_rng(0)
    values = {(s, seed, site): float(rng.uniform(0.3, 0.7) + (0.3 if s == "centralized" else 0))
              for s in STRATEGIES for seed in SEEDS for site in SITES}  # fmt: skip
    rows = []
    for s in STRATEGIES:
        for seed in SEEDS:
            test = {site: values[(s, seed, site)] for site in SITES}
            rows += cell_rows("segmentation", "cross_modality", s, seed, test={"mean_dice": test, "hd95": dict.fromkeys(SITES, 9.0)},
                              curve=[{k: v * r / 2 for k, v in test.items()} for r in (0, 1)])  # fmt: skip
    path = tmp_path / "r.csv"
    run.append(path, rows)
    return path, values


def _cells(table: list[str], strategy: str) -> list[str]:
    """The cells of ``strategy``'s row after its name."""
    row = next(line for line in table if line.startswith(f"| {strategy} |"))
    return [c.strip() for c in row.strip("|").split("|")][1:]


def _header(table: list[str]) -> list[str]:
    return [c.strip() for c in table[0].strip("|").split("|")]


def _suite(tasks, scenarios, strategies, variants=None, seeds=SEEDS):
    return {"name": "synthetic", "seeds": list(seeds), "rounds": 2, "local_epochs": 1, "tasks": tasks,
            "scenarios": scenarios, "variants": variants or {}, "experiments": [{"strategies": list(strategies)}]}  # fmt: skip


def test_scenario_table_matches_numpy_and_bolds_the_best(results):
    path, values = results
    res = report.Results(path, {"segmentation": "mean_dice"})
    table = report.scenario_table(res, "segmentation", "cross_modality", STRATEGIES)
    assert _header(table) == ["strategy", *SITES, "average", "worst site", "gain over Local (sites above)",
                              "s/round", "MB/round"]  # fmt: skip
    for s in STRATEGIES:
        per_seed = [np.mean([values[(s, seed, site)] for site in SITES]) for seed in SEEDS]
        cells = _cells(table, report.name(s))
        assert cells[2].strip("*") == f"{np.mean(per_seed):.3f} ± {np.std(per_seed, ddof=1):.3f}"
        assert (
            cells[0].strip("*").startswith(f"{np.mean([values[(s, seed, SITES[0])] for seed in SEEDS]):.3f}")
        )
        assert cells[5:] == ["2.0", "2.00"]  # s/round, MB/round (two sites x 1 MB)
    best = max(
        STRATEGIES, key=lambda s: np.mean([values[(s, seed, site)] for seed in SEEDS for site in SITES])
    )
    assert [s for s in STRATEGIES if _cells(table, report.name(s))[2].startswith("**")] == [best]


def test_site_judgement_and_its_columns_match_numpy(tmp_path):
    """Worst site = min over sites of the seed-mean; gain over Local = mean over the shared sites of the per-site
    difference of seed-means, with the count of sites above Local."""
    sites = ("a", "b", "c", "d")
    rng = np.random.default_rng(1)
    values = {s: rng.uniform(0.2, 0.9, (len(SEEDS), len(sites))) for s in ("local", "fedavg", "omnifm")}
    values["omnifm"][:, 3] = np.nan  # OmniFM has no results on site d
    rows = []
    for s, v in values.items():
        for i, seed in enumerate(SEEDS):
            test = {site: float(v[i, j]) for j, site in enumerate(sites) if not np.isnan(v[i, j])}
            rows += cell_rows("classification", "intra", s, seed, test={"accuracy": test})
    run.append(tmp_path / "r.csv", rows)
    res = report.Results(tmp_path / "r.csv", {"classification": "accuracy"})
    table = report.scenario_table(res, "classification", "intra", ["local", "fedavg", "omnifm"])
    local = values["local"].mean(axis=0)
    for s in ("fedavg", "omnifm"):
        means = np.array([np.mean(c[~np.isnan(c)]) if not np.isnan(c).all() else np.nan for c in values[s].T])
        shared = ~np.isnan(means)
        j = report.site_judgement(res, "classification", "intra", s)
        assert (
            j["worst"] == pytest.approx(np.nanmin(means))
            and j["worst_site"] == sites[int(np.nanargmin(means))]
        )
        assert j["gain"] == pytest.approx(np.mean(means[shared] - local[shared]))
        assert (j["wins"], j["sites"]) == (int(np.sum(means[shared] > local[shared])), int(shared.sum()))
        cells = _cells(table, report.name(s))
        assert cells[len(sites) + 1].strip("*") == f"{np.nanmin(means):.3f} ({j['worst_site']})"
        assert cells[len(sites) + 2].strip("*") == f"{j['gain']:+.3f} ({j['wins']}/{j['sites']})"
    assert report.site_judgement(res, "classification", "intra", "local") == {
        "worst_site": sites[int(np.argmin(local))], "worst": pytest.approx(local.min())}  # fmt: skip
    assert _cells(table, "Local")[len(sites) + 2] == "–"


def test_window_start_is_the_round_opening_the_last_fifth():
    for rounds in range(2, 60):
        expected = min(math.ceil(Fraction(4, 5) * rounds) - 1, rounds - 2)  # at least the last 2 rounds
        assert report.window_start(rounds) == expected, rounds
    assert [report.window_start(r) for r in (2, 3, 5, 10)] == [0, 1, 3, 7]


def test_convergence_flags_a_still_rising_run_and_not_a_flat_one(tmp_path):
    rng = np.random.default_rng(2)
    # 10 rounds: the window opens at round 7 (0-based), so "wobble" gains 0.705 - 0.7 (not 0.705 - 0.65)
    curves = {
        "short": [0.3, 0.5, 0.7],
        "flat": [0.2, 0.6, *[0.7] * 8],
        "wobble": [0.2, 0.6, *[0.7] * 6, 0.65, 0.705],
    }
    rows, gains = [], {}
    for s, curve in curves.items():
        for seed in SEEDS:
            noise = rng.normal(0, 0.002, len(curve))
            per_round = [{site: c + n + (0.01 if site == SITES[0] else -0.01) for site in SITES}
                         for c, n in zip(curve, noise, strict=True)]  # fmt: skip
            start = min(math.ceil(Fraction(4, 5) * len(curve)) - 1, len(curve) - 2)
            gains.setdefault(s, []).append(
                np.mean(list(per_round[-1].values())) - np.mean(list(per_round[start].values()))
            )
            rows += cell_rows("classification", "cross_modality", s, seed, metric="accuracy",
                              curve=per_round, test={"accuracy": per_round[-1]})  # fmt: skip
    # rising by 0.05 but the seeds' final test accuracy spreads by 0.1 (std): within noise, not flagged
    for seed in SEEDS:
        per_round = [dict.fromkeys(SITES, 0.5), dict.fromkeys(SITES, 0.55)]
        rows += cell_rows("classification", "cross_modality", "noisy", seed, metric="accuracy", curve=per_round,
                          test={"accuracy": dict.fromkeys(SITES, 0.5 + 0.1 * seed)})  # fmt: skip
    # PSNR: 1 % of the value is the tolerance (0.3 dB at 30 dB): a 0.2 dB gain is converged, 0.6 dB is not
    for s, gain in (("sr_flat", 0.2), ("sr_rising", 0.6)):
        for seed in SEEDS:
            per_round = [dict.fromkeys(SITES, 30.0 - gain), dict.fromkeys(SITES, 30.0)]
            rows += cell_rows(
                "sr", "cross_modality", s, seed, metric="psnr", curve=per_round, test={"psnr": per_round[-1]}
            )
    path = tmp_path / "r.csv"
    run.append(path, rows)
    res = report.Results(path, {"classification": "accuracy", "sr": "psnr"})
    conv = report.convergence(res)
    for s in curves:
        c = conv[("classification", "cross_modality", s, "scratch")]
        final = res.site_mean("classification", "cross_modality", s)
        assert c["gains"] == pytest.approx(gains[s]) and c["gain"] == pytest.approx(np.mean(gains[s]))
        assert c["threshold"] == pytest.approx(max(np.std(final, ddof=1), 0.01))
    assert conv[("classification", "cross_modality", "short", "scratch")]["flagged"]  # 0.5 -> 0.7
    assert conv[("classification", "cross_modality", "short", "scratch")]["window"] == (1, 2)
    assert not conv[("classification", "cross_modality", "flat", "scratch")]["flagged"]
    assert not conv[("classification", "cross_modality", "wobble", "scratch")]["flagged"]
    assert conv[("classification", "cross_modality", "wobble", "scratch")]["window"] == (7, 9)
    noisy = conv[("classification", "cross_modality", "noisy", "scratch")]
    assert noisy["gain"] == pytest.approx(0.05) and noisy["threshold"] == pytest.approx(0.1)
    assert not noisy["flagged"]
    assert not conv[("sr", "cross_modality", "sr_flat", "scratch")]["flagged"]
    assert conv[("sr", "cross_modality", "sr_rising", "scratch")]["flagged"]
    assert conv[("sr", "cross_modality", "sr_rising", "scratch")]["threshold"] == pytest.approx(0.3)

    suite = _suite({"classification": {"metric": "accuracy"}, "sr": {"metric": "psnr"}}, {"cross_modality": []},
                   [*curves, "sr_flat", "sr_rising"], seeds=SEEDS)  # fmt: skip
    text = report.write_report(suite, path, tmp_path / "out" / "r.md", tmp_path / "out" / "plots").read_text()
    section = text.split("## Not converged")[1].split("\n## ")[0]
    listed = {
        line.split("|")[3].strip() for line in section.splitlines() if line.startswith("| classification")
    }
    assert listed == {"short"} and "| sr | cross_modality | sr_rising |" in section
    assert "sr_flat" not in section and "| flat |" not in section
    table = text.split("## classification")[1].split("\n## ")[0]
    assert _cells(table.splitlines(), "short")[len(SITES)].endswith(report.DAGGER)
    assert not _cells(table.splitlines(), "flat")[len(SITES)].endswith(report.DAGGER)


def test_unseen_site_scenarios_make_one_table_with_a_column_per_held_out_site(tmp_path):
    held_out = ("icbm_t1", "colin_t1", "head_ct")
    rng = np.random.default_rng(3)
    values = {
        (s, site): rng.uniform(0.3, 0.9, len(SEEDS))
        for s in ("local", "fedavg", "omnifm")
        for site in held_out
    }
    rows = []
    for (s, site), v in values.items():
        for i, seed in enumerate(SEEDS):
            rows += cell_rows("segmentation", f"unseen_site/{site}", s, seed, test={"mean_dice": {site: float(v[i])}},
                              curve=[{"other": 0.5}, {"other": 0.5}])  # fmt: skip
    path = tmp_path / "r.csv"
    run.append(path, rows)
    suite = _suite(
        {"segmentation": {"metric": "mean_dice"}}, {"unseen_site": []}, ["local", "fedavg", "omnifm"]
    )
    text = report.write_report(suite, path, tmp_path / "out" / "r.md", tmp_path / "out" / "plots").read_text()
    assert "### unseen site" in text and "unseen_site/" not in text.split("### unseen site")[0]
    table = [line for line in text.split("### unseen site")[1].splitlines() if line.startswith("|")]
    assert _header(table)[: len(held_out) + 2] == ["strategy", *held_out, "average"]
    for s in ("local", "fedavg", "omnifm"):
        cells = _cells(table, report.name(s))
        for j, site in enumerate(held_out):
            v = values[(s, site)]
            assert cells[j].strip("*") == f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"
        per_seed = np.mean(
            [values[(s, site)] for site in held_out], axis=0
        )  # mean over held-out sites per seed
        assert cells[len(held_out)].strip("*") == f"{per_seed.mean():.3f} ± {per_seed.std(ddof=1):.3f}"


def test_also_metrics_and_the_baseline_variant(tmp_path, caplog):
    """The ``also`` metrics in a table beside the headline (a missing one skipped), the baseline variant one
    labelled row in every table of its task, and the summary names the strategies above it."""
    rng = np.random.default_rng(4)
    strategies = ("local", "fedavg", "omnifm", "question_only")
    level = {"local": 0.7, "fedavg": 0.4, "omnifm": 0.6, "question_only": 0.5}
    values = {}
    rows = []
    for s in strategies:
        for seed in SEEDS:
            test = {m: {site: float(level[s] + rng.normal(0, 0.02)) for site in SITES}
                    for m in ("acc_site_varying", "accuracy", "acc_site_constant")}  # fmt: skip
            values[(s, seed)] = test
            rows += cell_rows("vqa", "cross_modality", s, seed, metric="acc_site_varying", test=test,
                              curve=[test["acc_site_varying"], test["acc_site_varying"]])  # fmt: skip
    path = tmp_path / "r.csv"
    run.append(path, rows)
    tasks = {"vqa": {"metric": "acc_site_varying", "also": ["accuracy", "acc_site_constant", "not_written"],
                     "baseline_variant": "question_only"}}  # fmt: skip
    suite = _suite(tasks, {"cross_modality": []}, ["local", "fedavg", "omnifm", "question_only"],
                   variants={"question_only": {"strategy": "fedavg"}})  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmark:start -->\n<!-- benchmark:end -->\n")
    md = report.write_report(
        suite, path, tmp_path / "out" / "r.md", tmp_path / "out" / "plots", readme=readme
    )
    text = md.read_text()
    row = "*question_only* (baseline variant)"
    tables = [t for t in re.split(r"\n\n", text) if t.startswith("| strategy |")]
    assert len(tables) == 2 and all(f"| {row} |" in t for t in tables)  # scenario table and metrics table
    metrics_table = tables[1].splitlines()
    assert _header(metrics_table) == ["strategy", "acc_site_varying", "accuracy", "acc_site_constant"]
    for s in ("local", "fedavg", "omnifm", "question_only"):
        cells = _cells(metrics_table, row if s == "question_only" else report.name(s))
        for m, cell in zip(("acc_site_varying", "accuracy", "acc_site_constant"), cells, strict=True):
            per_seed = [np.mean(list(values[(s, seed)][m].values())) for seed in SEEDS]
            assert cell.strip("*") == f"{np.mean(per_seed):.3f} ± {np.std(per_seed, ddof=1):.3f}"
    assert not any(c.startswith("**") for c in _cells(metrics_table, row))  # not ranked
    assert "above it: Local, OmniFM (2/3)" in text.split("## Not converged")[0]
    assert "above it: Local, OmniFM (2/3)" in readme.read_text() and f"| {row} |" in readme.read_text()
    assert "## Ablation" not in text  # the baseline variant is no ablation


def test_missing_baseline_variant_and_metrics_do_not_fail(results, tmp_path):
    path, _ = results
    tasks = {"segmentation": {"metric": "mean_dice", "also": ["not_written"], "baseline_variant": "not_run"}}
    suite = _suite(tasks, {"cross_modality": []}, STRATEGIES)
    text = report.write_report(suite, path, tmp_path / "out" / "r.md", tmp_path / "out" / "plots").read_text()
    assert "not_run" not in text and "not_written" not in text and "### cross_modality" in text
    assert "Test metrics (" not in text  # only the headline is left: no extra table


def test_diagnostics_table_and_plot(tmp_path):
    rng = np.random.default_rng(5)
    rows, last = [], {}
    for s in ("omnifm", "omnifm_no_spa"):
        for seed in SEEDS:
            diag = {m: [{site: float(rng.uniform(0, 1)) for site in (*SITES, "server")} for _ in range(3)]
                    for m in diagnostics.DIAGNOSTICS if not (s == "omnifm_no_spa" and m == "own_modality_share")}  # fmt: skip
            for m, per_round in diag.items():
                last.setdefault((s, m), []).append(np.mean(list(per_round[-1].values())))
            rows += cell_rows("segmentation", "cross_modality", s, seed, test={"mean_dice": dict.fromkeys(SITES, 0.5)},
                              curve=[dict.fromkeys(SITES, 0.5)] * 3, diag=diag)  # fmt: skip
    rows += cell_rows(
        "segmentation", "cross_modality", "fedavg", 0, test={"mean_dice": dict.fromkeys(SITES, 0.5)}
    )
    path = tmp_path / "r.csv"
    run.append(path, rows)
    res = report.Results(path, {"segmentation": "mean_dice"})
    table = diagnostics.last_round_table(res.diag, "segmentation", ["cross_modality"])
    assert _header(table) == ["scenario", "strategy", *diagnostics.DIAGNOSTICS]
    assert len(table) == 4  # fedavg has no diagnostics
    for s in ("omnifm", "omnifm_no_spa"):
        row = next(line for line in table if f"| {s} |" in line)
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        for m, cell in zip(diagnostics.DIAGNOSTICS, cells, strict=True):
            v = last.get((s, m))
            assert cell == (f"{np.mean(v):.3g} ± {np.std(v, ddof=1):.2g}" if v else "–")
    suite = _suite({"segmentation": {"metric": "mean_dice"}}, {"cross_modality": []}, ["fedavg", "omnifm"],
                   variants={"omnifm_no_spa": {"strategy": "omnifm"}})  # fmt: skip
    md = report.write_report(suite, path, tmp_path / "out" / "r.md", tmp_path / "out" / "plots")
    assert (tmp_path / "out" / "plots" / "segmentation_diagnostics.png").stat().st_size > 1000
    assert "segmentation_diagnostics.png" in md.read_text()


def test_frozen_record_is_judged_per_cell_against_the_suite_file(results, tmp_path, caplog):
    """Each cell records the digest of the settings that decide its run; the report checks them against the
    suite file as it is: a comment or another task's change (a new suite file sha256) leaves the cells frozen, a
    changed budget or override unfreezes them, and a missing record or mixed data builders are warned about."""
    path, _ = results
    suite = _suite({"segmentation": {"metric": "mean_dice"}}, {"cross_modality": ["a", "b"]}, STRATEGIES)
    cells = [
        run.Cell("segmentation", "cross_modality", s, "scratch", seed) for s in STRATEGIES for seed in SEEDS
    ]
    text = report.write_report(suite, path, tmp_path / "a.md", tmp_path / "plots").read_text()
    assert "suite file sha256 not recorded; data builder not recorded" in text
    assert "cell settings not recorded" in text and "Warning" not in text
    for k, cell in enumerate(cells):  # two suite file versions, one set of settings
        meta = {"suite_sha": "ab" * 8 if k % 2 else "cd" * 8, "settings_sha": run.settings_sha(suite, cell),
                "data_version": "federation-1"}  # fmt: skip
        run.append(path, cell_rows(*cell.key[:3], cell.seed, meta=meta, cost=False))
    text = report.write_report(suite, path, tmp_path / "b.md", tmp_path / "plots").read_text()
    header = text.split("## Summary")[0]
    assert f"suite file sha256 `{'ab' * 8}`, `{'cd' * 8}`; data builder `federation-1`" in header
    assert (
        "every one of the 12 cells ran with the settings of the suite file" in header
        and "Warning" not in text
    )
    reported_only = {**suite, "tasks": {"segmentation": {"metric": "mean_dice", "also": ["hd95"]}}}
    assert (
        "Warning"
        not in report.write_report(reported_only, path, tmp_path / "c.md", tmp_path / "p").read_text()
    )
    longer = {**suite, "tasks": {"segmentation": {"metric": "mean_dice", "rounds": 32}}}
    with caplog.at_level(logging.WARNING, logger="omnifm_benchmark"):
        text = report.write_report(longer, path, tmp_path / "d.md", tmp_path / "plots").read_text()
    assert "12 of 12 cells ran with settings other than the suite file's now" in text
    assert "segmentation/cross_modality/centralized/scratch/0" in text and "12 of 12 cells" in caplog.text
    other_sites = {**suite, "scenarios": {"cross_modality": ["a"]}}
    assert (
        "12 of 12 cells"
        in report.write_report(other_sites, path, tmp_path / "e.md", tmp_path / "p").read_text()
    )
    run.append(path, cell_rows("segmentation", "cross_modality", "fedavg", 9, cost=False, meta={
        "settings_sha": run.settings_sha(suite, cells[0]), "data_version": "reference-sites-2"}))  # fmt: skip
    text = report.write_report(suite, path, tmp_path / "f.md", tmp_path / "plots").read_text()
    assert "mix 2 values of the data builder" in text and "Warning: 0 of" not in text
    run.append(
        path,
        cell_rows("segmentation", "cross_modality", "local", 9, cost=False, test={"mean_dice": {"a": 0.5}}),
    )
    text = report.write_report(suite, path, tmp_path / "g.md", tmp_path / "plots").read_text()
    assert (
        "1 of 13 cells ran with settings other than the suite file's now, or recorded none: segmentation/cross_modality/local/scratch/9."
        in text
    )


def test_margin_is_against_the_best_non_centralized_baseline(results):
    path, values = results
    res = report.Results(path, {"segmentation": "mean_dice"})
    m = report.margin(res, "segmentation", "cross_modality")
    mean = {s: np.mean([values[(s, seed, site)] for seed in SEEDS for site in SITES]) for s in STRATEGIES}
    best = max(("local", "fedavg"), key=mean.get)
    assert m["best"] == best and m["margin"] == pytest.approx(mean["omnifm"] - mean[best])
    assert m["centralized"][0] == pytest.approx(mean["centralized"])
    other = "fedavg" if best == "local" else "local"
    assert report.margin(res, "segmentation", "cross_modality", exclude=[best])["best"] == other


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


def test_real_image_table_is_apart_from_the_sites_and_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    real = {(s, seed, site): float(rng.uniform(0.2, 0.8)) for s in ("fedavg", "omnifm") for seed in SEEDS
            for site in ("real_icbm_t1", "real_colin_t1")}  # fmt: skip
    rows = []
    for s in ("fedavg", "omnifm"):
        for seed in SEEDS:
            rows += cell_rows(
                "segmentation", "cross_modality", s, seed, test={"mean_dice": {site: 0.5 for site in SITES}}
            )
            rows += [{**rows[0], "strategy": s, "seed": seed, "split": "real_test", "site": site, "metric": "mean_dice",
                      "value": real[(s, seed, site)]} for site in ("real_icbm_t1", "real_colin_t1")]  # fmt: skip
    path = tmp_path / "r.csv"
    run.append(path, rows)
    res = report.Results(path, {"segmentation": "mean_dice"})
    assert set(res.test[("segmentation", "cross_modality", "omnifm", "scratch", 0)]) == set(
        SITES
    )  # never averaged in
    table = report.real_table(res, "segmentation", "cross_modality", ["fedavg", "omnifm"])
    line = next(t for t in table if t.startswith("| **OmniFM** |"))
    cells = [c.strip() for c in line.strip("|").split("|")[1:]]
    for site, cell in zip(["real_colin_t1", "real_icbm_t1"], cells, strict=True):
        values = [real[("omnifm", seed, site)] for seed in SEEDS]
        assert cell == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
