"""The benchmark runner: suites expand into the cells the issue asks for, with one budget; results resume."""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import run  # noqa: E402

REQUIRED = {
    "local",
    "centralized",
    "fedavg",
    "fedprox",
    "fedbn",
    "fedper",
    "ditto",
    "feddg",
    "harmofl",
    "omnifm",
}
ABLATIONS = {
    "use_gskr",
    "use_ecaf",
    "use_prefix",
    "use_suffix",
    "use_spa",
    "network_def#private_norms",
    "network_def#private_gate",
    "network_def#suffix_film",
}


@pytest.fixture(scope="module")
def default():
    return run.load_suite("default")


@pytest.fixture(scope="module")
def full():
    return run.load_suite("full")


def test_default_suite_covers_every_task_scenario_strategy_and_seed(default):
    """Every strategy on every task in the headline scenario; the other scenarios with the references
    (Local, Centralized, FedAvg) and OmniFM; fine-tuning; the image-blind VQA baseline; every ablation."""
    cells = run.expand(default)
    assert len(cells) == len(set(cells))
    assert {"segmentation", "classification", "super_resolution_x2", "vqa"} == set(default["tasks"])
    seeds = defaultdict(set)
    for c in cells:
        seeds[(c.task, c.scenario, c.strategy, c.init)].add(c.seed)
    assert len(default["seeds"]) >= 3
    all_seeds = set(default["seeds"])
    for task in default["tasks"]:
        left_out = {"fedbn"} if task.startswith("super_resolution") else set()  # no norm layers: FedAvg again
        for strategy in REQUIRED - left_out:
            assert seeds[(task, "cross_modality", strategy, "scratch")] == all_seeds, (task, strategy)
    unseen = [s for s in {c.scenario for c in cells} if s.startswith("unseen_site/")]
    assert unseen and "intra_modality" in {c.scenario for c in cells}
    for scenario in ["intra_modality", *unseen]:
        # Local has no global model to test on an unseen site
        references = {"centralized", "fedavg", "omnifm"} | (
            {"local"} if scenario == "intra_modality" else set()
        )
        for strategy in references:
            assert seeds[("segmentation", scenario, strategy, "scratch")] == all_seeds, (scenario, strategy)
    # the image-blind VQA baseline beside every VQA number, and the headline without site-constant questions
    assert (
        seeds[("vqa", "cross_modality", default["tasks"]["vqa"]["baseline_variant"], "scratch")] == all_seeds
    )
    assert default["tasks"]["vqa"]["metric"] == "acc_site_varying"


def test_full_suite_adds_fine_tuning_every_ablation_and_every_held_out_site(default, full):
    cells, default_cells = set(run.expand(full)), set(run.expand(default))
    keys = {c.key[:4] for c in cells}
    assert {c.key[:4] for c in default_cells} <= keys  # the default's cells and more
    seeds = defaultdict(set)
    for c in cells:
        seeds[(c.task, c.scenario, c.strategy, c.init)].add(c.seed)
    for task in full["tasks"]:
        for strategy in REQUIRED - ({"fedbn"} if task.startswith("super_resolution") else set()):
            assert seeds[(task, "cross_modality", strategy, "pretrained")] == set(full["seeds"]), (
                task,
                strategy,
            )
    assert {c.scenario for c in cells if c.scenario.startswith("unseen")} == {
        f"unseen_site/{s}" for s in full["scenarios"]["unseen_site"]
    }
    ablated = {
        k
        for v in full["variants"].values()
        for k, value in (v.get("overrides") or {}).items()
        if value is False
    }
    assert ABLATIONS <= ablated
    for name, variant in full["variants"].items():
        if variant["strategy"] != "omnifm":
            continue
        # onboarding only acts on a site that never trained
        scenarios = (
            full["scenarios"]["unseen_site"] if "onboarding" in (variant.get("options") or {}) else [None]
        )
        for scenario in scenarios:
            scenario = f"unseen_site/{scenario}" if scenario else "cross_modality"
            assert seeds[("segmentation", scenario, name, "scratch")] == set(full["seeds"]), name


def test_pretraining_runs_first_on_other_sites(full):
    cells = run.expand(full)
    first_finetune = min(i for i, c in enumerate(cells) if c.init == "pretrained")
    for task in {c.task for c in cells if c.init == "pretrained"}:
        pre = run.pretraining_cell(full, task)
        assert cells.index(pre) < first_finetune
    pre_sites = set(full["pretraining"]["sites"])
    assert not pre_sites & set(full["scenarios"]["cross_modality"])  # fine-tuned on sites it never saw


@pytest.mark.parametrize("name", ["default", "full"])
def test_every_strategy_gets_the_same_local_budget(name, tmp_path, monkeypatch):
    """Within a task and scenario every strategy trains the same rounds x epochs, batch, image size and sites."""
    import functools

    default = run.load_suite(name)
    import omnifm_monai.fl.bundle as simulator

    monkeypatch.setattr(simulator, "bundle_task", functools.lru_cache(simulator.bundle_task))
    tasks = {t: simulator.bundle_task(ROOT / spec["bundle"]) for t, spec in default["tasks"].items()}
    for sites in (*default["scenarios"].values(), (default.get("pretraining") or {}).get("sites", [])):
        for task in tasks.values():
            _sites(tmp_path, sites, task)
    budgets = defaultdict(set)
    for c in run.expand(default):
        kw = run.simulate_kwargs(default, c, tmp_path)
        o = kw["overrides"]
        budgets[(c.task, c.scenario)].add(
            (kw["rounds"], kw["local_epochs"], o["batch_size"], o["image_size"], tuple(kw["sites"]))
        )
    assert all(len(b) == 1 for b in budgets.values()), {k: b for k, b in budgets.items() if len(b) > 1}


def _sites(root: Path, names, task="segmentation"):
    for name in names:
        (root / "sites" / name).mkdir(parents=True, exist_ok=True)
        (root / "sites" / name / f"{task}.json").write_text("{}")


def test_simulate_kwargs_merge_settings_and_point_fine_tuning_at_the_pretrained_weights(full, tmp_path):
    default = full
    _sites(tmp_path, ["t1", "t2w", "pdw", "flair", "t1_simulated", "real_icbm_t1", "real_colin_t1"])
    cell = run.Cell("segmentation", "cross_modality", "omnifm_no_gskr", "pretrained", 1)
    kw = run.simulate_kwargs(default, cell, tmp_path)
    assert kw["strategy"] == "omnifm" and kw["overrides"]["use_gskr"] is False
    assert kw["overrides"]["image_size"] == default["overrides"]["image_size"]
    assert list(kw["sites"]) == ["t1", "t2w", "pdw", "flair"]  # CT: no segmentation labels
    assert list(kw["unseen_sites"]) == [
        "real_icbm_t1",
        "real_colin_t1",
    ]  # the real volumes, scored as they are
    pre = run.pretraining_cell(default, "segmentation")
    assert kw["init_weights"] == str(pre.folder(tmp_path) / "global_model.pt")
    assert run.simulate_kwargs(default, pre, tmp_path)["sites"] == {
        "t1_simulated": str(tmp_path / "sites" / "t1_simulated")
    }
    local = run.simulate_kwargs(
        default, run.Cell("segmentation", "cross_modality", "local", "scratch", 0), tmp_path
    )
    assert local["unseen_sites"] == {}  # no global model to score them with
    _sites(tmp_path, ["ct"], "super_resolution")
    sr = run.simulate_kwargs(
        default, run.Cell("super_resolution_x2", "cross_modality", "fedavg", "scratch", 0), tmp_path
    )
    assert sr["overrides"]["scale"] == 2 and sr["init_weights"] is None and list(sr["sites"]) == ["ct"]


def test_bad_suite_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        (run.SUITES / "quick.yaml")
        .read_text()
        .replace("strategies: [fedavg, omnifm]", "strategies: [fedavg, fedmagic]")
    )
    with pytest.raises(ValueError, match=r"bad\.yaml.*fedmagic"):
        run.load_suite(path)
    with pytest.raises(FileNotFoundError, match="nosuch"):
        run.load_suite("nosuch")


def test_only_filters():
    cell = run.Cell("vqa", "intra_modality", "fedavg", "scratch", 2)
    assert run.matches(cell, run.parse_only(["task=vqa,segmentation", "seed=2"]))
    assert not run.matches(cell, run.parse_only(["strategy=omnifm"]))
    with pytest.raises(ValueError, match="KEY"):
        run.parse_only(["colour=red"])


def _row(cell, split="test", value="0.5", metric="mean_dice", site="a"):
    return {**dict(zip(run.CELL_FIELDS, cell.key, strict=True)), "round": 0, "site": site, "split": split,
            "metric": metric, "value": value, "commit": "x"}  # fmt: skip


def test_results_append_whole_cells_and_checks_find_missing_and_non_finite(tmp_path):
    results = tmp_path / "r.csv"
    a, b, c = (
        run.Cell("segmentation", "cross_modality", s, "scratch", 0) for s in ("fedavg", "omnifm", "local")
    )
    run.append(results, [_row(a), _row(a, "validation")])
    run.append(results, [_row(b, value="nan")])
    with open(results) as f:
        assert list(csv.reader(f))[0] == list(run.FIELDS)  # one header, then rows
    assert run.completed(results) == {a.key, b.key}
    problems = run.check_results([a, b, c], results)
    assert (
        len(problems) == 2
        and "nan" in problems[0]
        and "local" in problems[1]
        and "no test metrics" in problems[1]
    )


@pytest.mark.slow
def test_quick_suite_runs_every_cell_resumes_and_reports(tmp_path):
    """The CI check of the issue: every cell of the quick suite ran and every metric is finite; a second run
    adds nothing; the report is written with its plots."""
    results, workdir = tmp_path / "quick.csv", tmp_path / "work"
    assert run.main(["--suite", "quick", "--workdir", str(workdir), "--results", str(results)]) == 0
    suite = run.load_suite("quick")
    cells = run.expand(suite)
    with open(results) as f:
        rows = list(csv.DictReader(f))
    by_cell = defaultdict(list)
    for r in rows:
        by_cell[tuple(r[k] for k in run.CELL_FIELDS)].append(r)
    assert set(by_cell) == {c.key for c in cells}
    for cell in cells:
        test = [r for r in by_cell[cell.key] if r["split"] == "test"]
        assert {r["metric"] for r in test} >= {suite["tasks"][cell.task]["metric"]}, cell
        assert all(math.isfinite(float(r["value"])) for r in by_cell[cell.key] if r["split"] != "meta"), cell
        meta = {r["metric"]: r["value"] for r in by_cell[cell.key] if r["split"] == "meta"}
        assert meta["suite_sha"] == suite["sha256"] and meta["data_version"] != "unknown", cell
        assert meta["settings_sha"] == run.settings_sha(suite, cell), cell
    size = results.stat().st_size
    assert run.main(["--suite", "quick", "--workdir", str(workdir), "--results", str(results)]) == 0
    assert results.stat().st_size == size  # resumed: nothing ran twice

    import report

    md = report.write_report(
        suite, results, tmp_path / "report" / "quick.md", tmp_path / "report" / "plots", workdir
    )
    text = md.read_text()
    for task in suite["tasks"]:
        assert (
            f"## {task}" in text
            and (tmp_path / "report" / "plots" / f"{task}_curves.png").stat().st_size > 1000
        )


def test_unseen_site_scenario_rotates_the_held_out_site_and_leaves_local_out(tmp_path):
    suite = {
        "name": "t", "data": {}, "seeds": [0], "rounds": 1, "local_epochs": 1,
        "tasks": {"segmentation": {"bundle": "bundles/omnifm_segmentation", "metric": "mean_dice"}},
        "scenarios": {"cross": ["a", "b", "c"], "unseen_site": ["a", "b", "c"]},
        "experiments": [{"strategies": ["local", "fedavg", "fedbn"]}],
    }  # fmt: skip
    run.check_suite(suite, tmp_path / "t.yaml")
    cells = run.expand(suite)
    unseen = {c.scenario for c in cells if c.scenario.startswith("unseen_site")}
    assert unseen == {"unseen_site/a", "unseen_site/b", "unseen_site/c"}
    assert not any(c.strategy == "local" and c.scenario in unseen for c in cells)
    assert any(c.strategy == "fedbn" for c in cells)  # the segmentation UNet has normalisation layers
    _sites(tmp_path, ["a", "b", "c"])
    kw = run.simulate_kwargs(
        suite, run.Cell("segmentation", "unseen_site/b", "fedavg", "scratch", 0), tmp_path
    )
    assert set(kw["sites"]) == {"a", "c"} and set(kw["unseen_sites"]) == {"b"}
    # or only the named sites held out, each trained on all the others
    suite["unseen_held_out"] = ["c"]
    assert {c.scenario for c in run.expand(suite) if c.scenario.startswith("unseen")} == {"unseen_site/c"}
    kw = run.simulate_kwargs(
        suite, run.Cell("segmentation", "unseen_site/c", "fedavg", "scratch", 0), tmp_path
    )
    assert set(kw["sites"]) == {"a", "b"} and set(kw["unseen_sites"]) == {"c"}
    suite["unseen_held_out"] = ["d"]
    with pytest.raises(ValueError, match="unseen_held_out"):
        run.check_suite(suite, tmp_path / "t.yaml")


def test_fedbn_is_left_out_for_a_network_without_normalisation_layers(default):
    sr = [c for c in run.expand(default) if c.task.startswith("super_resolution")]
    assert sr and not any(c.strategy == "fedbn" for c in sr)  # FedBN would be FedAvg again
    assert any(c.strategy == "fedbn" and c.task == "segmentation" for c in run.expand(default))
