"""Benchmark suites: OmniFM against the federated baselines on the reference sites.

    python benchmarks/run.py --suite quick|default [--only task=segmentation --only strategy=fedavg,omnifm] [--workers 2]
    python benchmarks/run.py --suite paper --data_root DIR   # the paper's datasets, downloaded into DIR

A suite is one YAML file under ``benchmarks/suites/``: the reference data to build, the training budget, the
tasks (bundles), the scenarios (site lists), the ablation variants and the experiments (which strategies run
on which tasks, scenarios and initialisations). It expands into cells, one (task, scenario, strategy, init,
seed) each, run by the in-process simulator (:func:`omnifm_monai.fl.simulator.simulate`).

Every finished cell appends its rows to the results CSV (``benchmarks/results/<suite>.csv`` by default;
columns :data:`FIELDS`): per-round validation metrics, per-site test metrics after the last round, upload bytes
and wall time per round. Cells already in the CSV are skipped, so an interrupted suite resumes where it stopped
(a cell killed half-way resumes from its last completed round). At the end every selected cell must be in the
CSV with finite metrics, or the command exits with 1; ``benchmarks/report.py`` then writes tables and plots.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "benchmarks" / "suites"
FIELDS = (
    "task",
    "scenario",
    "strategy",
    "init",
    "seed",
    "round",
    "site",
    "split",
    "metric",
    "value",
    "commit",
)
CELL_FIELDS = ("task", "scenario", "strategy", "init", "seed")
PRETRAINING = "pretraining"  # the scenario name of the central pre-training runs that fine-tuning starts from
INITS = ("scratch", "pretrained")
# files whose changes change the results: the commit column is marked "+dirty" when they differ from HEAD
CODE_PATHS = ("omnifm_monai", "bundles", "benchmarks/run.py", "benchmarks/suites")

logger = logging.getLogger("omnifm_benchmark")


@dataclass(frozen=True)
class Cell:
    """One run: a strategy (or an ablation variant) on one task and scenario, from one initialisation and seed."""

    task: str
    scenario: str
    strategy: str
    init: str
    seed: int

    @property
    def key(self) -> tuple[str, ...]:
        return (self.task, self.scenario, self.strategy, self.init, str(self.seed))

    def folder(self, workdir: Path) -> Path:
        return Path(workdir, "runs", self.task, self.scenario, self.strategy, self.init, f"seed{self.seed}")

    def __str__(self) -> str:
        return "/".join(self.key)


# ----------------------------------------------------------------------------------------------------- suites
def load_suite(name: str | Path) -> dict[str, Any]:
    """A suite by name (``benchmarks/suites/<name>.yaml``) or path, checked."""
    path = Path(name) if Path(name).suffix in (".yaml", ".yml") else SUITES / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"suite {name!r}: no file {path}; suites: {sorted(p.stem for p in SUITES.glob('*.yaml'))}."
        )
    text = path.read_text()
    suite = yaml.safe_load(text)
    check_suite(suite, path)
    return {"name": path.stem, "sha256": hashlib.sha256(text.encode()).hexdigest()[:16], **suite}


def check_suite(suite: Any, path: Path) -> None:
    """Raise ``ValueError`` naming the file and the first thing wrong with it."""
    from omnifm_monai.fl.strategies import STRATEGIES

    def fail(what: str) -> None:
        raise ValueError(f"{path}: {what}")

    if not isinstance(suite, dict):
        fail("must be a mapping of settings.")
    for key in ("data", "seeds", "rounds", "local_epochs", "tasks", "scenarios", "experiments"):
        if key not in suite:
            fail(f"missing `{key}`.")
    if not isinstance(suite["scenarios"], dict) or not all(
        isinstance(v, list) for v in suite["scenarios"].values()
    ):
        fail("`scenarios` must map each scenario name to a list of sites.")
    held_out = set(suite.get("unseen_held_out") or [])
    if held_out - set(suite["scenarios"].get(UNSEEN, [])):
        fail(f"unseen_held_out names sites not in the unseen_site scenario: {sorted(held_out)}.")
    if suite.get("lr_schedule", "constant") not in ("constant", "cosine"):
        fail(f"lr_schedule must be constant or cosine, not {suite['lr_schedule']!r}.")
    builder = (suite["data"] or {}).get("builder", "build_reference_sites")
    if builder not in ("build_reference_sites", "build_federation_sites", "prepare"):
        fail(
            f"data: builder must be build_reference_sites, build_federation_sites or prepare, not {builder!r}."
        )
    datasets = (suite["data"] or {}).get("datasets") or {}
    if builder == "prepare" and not all(
        isinstance(d, dict) and "format" in d and "input" in d for d in datasets.values()
    ):
        fail(
            "data: the prepare builder needs `datasets`, each with a `format` and an `input` under --data_root."
        )
    for task, spec in suite["tasks"].items():
        if "data" in spec and spec["data"] not in datasets:
            fail(f"task `{task}`: data {spec['data']!r} is not one of data.datasets {sorted(datasets)}.")
    variants = suite.get("variants") or {}
    for label, variant in variants.items():
        if variant.get("strategy") not in STRATEGIES:
            fail(
                f"variant `{label}` names an unknown strategy {variant.get('strategy')!r}; known: {sorted(STRATEGIES)}."
            )
    for task, spec in suite["tasks"].items():
        if not (ROOT / spec.get("bundle", "")).is_dir():
            fail(f"task `{task}`: bundle {spec.get('bundle')!r} is not a folder of this project.")
    for i, exp in enumerate(suite["experiments"]):
        for key, known in (
            ("tasks", suite["tasks"]),
            ("scenarios", suite["scenarios"]),
            ("strategies", {**STRATEGIES, **variants}),
        ):
            unknown = sorted(set(exp.get(key) or []) - set(known))
            if unknown:
                fail(f"experiment {i + 1}: unknown {key} {unknown}; known: {sorted(known)}.")
        if not exp.get("strategies"):
            fail(f"experiment {i + 1}: no `strategies`.")
        if exp.get("init", "scratch") not in INITS:
            fail(f"experiment {i + 1}: init must be one of {INITS}, not {exp.get('init')!r}.")
        if exp.get("init") == "pretrained" and "pretraining" not in suite:
            fail(
                f"experiment {i + 1} fine-tunes (init: pretrained) but the suite has no `pretraining` section."
            )


UNSEEN = "unseen_site"  # scenario prefix: train on the other sites, test on the held-out one


def scenario_sites(suite: Mapping[str, Any], scenario: str) -> tuple[list[str], list[str]]:
    """(training sites, unseen sites) of a scenario. ``unseen_site/<site>`` trains on the other sites of the
    suite's ``unseen_site`` list and tests on ``<site>`` (a rotation: every site is held out once)."""
    if scenario == PRETRAINING:
        return list(suite["pretraining"]["sites"]), []
    if scenario.startswith(UNSEEN + "/"):
        held = scenario.split("/", 1)[1]
        return [s for s in suite["scenarios"][UNSEEN] if s != held], [held]
    return list(suite["scenarios"][scenario]), []


REPORT_ONLY = ("metric", "also", "baseline_variant")  # task keys that shape the report, not the runs


def cell_settings(suite: Mapping[str, Any], cell: Cell) -> dict[str, Any]:
    """Everything in the suite that decides a cell's run: the data, the budget, the task's bundle and overrides,
    the scenario's sites, the real sites, the variant, and pre-training for a fine-tuned cell. Comments and
    other cells' settings are not in it, so editing them does not unfreeze this cell."""
    task = {k: v for k, v in suite["tasks"][cell.task].items() if k not in REPORT_ONLY}
    names, unseen = scenario_sites(suite, cell.scenario)
    settings = {
        "data": suite.get("data"),
        "task": task,
        "rounds": task.get("rounds", suite["rounds"]),
        "local_epochs": task.get("local_epochs", suite["local_epochs"]),
        "lr_schedule": suite.get("lr_schedule", "constant"),
        "overrides": suite.get("overrides") or {},
        "sites": names,
        "unseen_sites": unseen,
        "real_sites": suite.get("real_sites") or [],
        "variant": (suite.get("variants") or {}).get(cell.strategy, {"strategy": cell.strategy}),
    }
    if cell.scenario == PRETRAINING or cell.init == "pretrained":
        settings["pretraining"] = suite.get("pretraining")
    return settings


def settings_sha(suite: Mapping[str, Any], cell: Cell) -> str:
    """A digest of :func:`cell_settings`: the frozen-benchmark record of one cell."""
    text = json.dumps(cell_settings(suite, cell), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scenario_names(suite: Mapping[str, Any], names: Sequence[str] | None = None) -> list[str]:
    """Scenario names of cells: ``unseen_site`` expands to one scenario per held-out site (every site of its
    list in turn, or those of the suite's ``unseen_held_out``)."""
    out = []
    held_out = suite.get("unseen_held_out") or suite["scenarios"].get(UNSEEN, [])
    for name in names or suite["scenarios"]:
        out += [f"{UNSEEN}/{s}" for s in held_out] if name == UNSEEN else [name]
    return out


def _strategy_class(suite: Mapping[str, Any], strategy: str) -> type:
    from omnifm_monai.fl.strategies import strategy_class

    return strategy_class(((suite.get("variants") or {}).get(strategy) or {}).get("strategy", strategy))


def _global_model(suite: Mapping[str, Any], strategy: str) -> bool:
    return _strategy_class(suite, strategy).shares_weights


def _applies(suite: Mapping[str, Any], task: str, scenario: str, strategy: str) -> bool:
    """Cells that would measure nothing are left out: Local has no global model for an unseen site, and
    FedBN is FedAvg again on a network without normalisation layers."""
    cls = _strategy_class(suite, strategy)
    if scenario.startswith(UNSEEN) and not cls.shares_weights:
        return False
    return not (cls.name == "fedbn" and not _has_norm_layers(suite, task, cls()))


_NORM_CACHE: dict[tuple, bool] = {}


def _has_norm_layers(suite: Mapping[str, Any], task: str, strategy: Any) -> bool:
    """Whether the network the strategy trains on this task (e.g. the plain backbone) has normalisation layers."""
    from omnifm_monai.fl.bundle import build_network
    from omnifm_monai.fl.engine import strategy_overrides
    from omnifm_monai.fl.strategies import norm_keys

    spec = suite["tasks"][task]
    key = (spec["bundle"], repr(sorted((spec.get("overrides") or {}).items())), strategy.name)
    if key not in _NORM_CACHE:
        overrides = {**(suite.get("overrides") or {}), **(spec.get("overrides") or {})}
        overrides = {k: v for k, v in overrides.items() if k not in ("dataset_dir",)}
        try:
            bundle = ROOT / spec["bundle"]
            _NORM_CACHE[key] = bool(
                norm_keys(build_network(bundle, strategy_overrides(bundle, strategy, overrides)))
            )
        except Exception:  # a network sized by its data (VQA's vocabulary) cannot be built without it
            _NORM_CACHE[key] = True
    return _NORM_CACHE[key]


def expand(suite: Mapping[str, Any]) -> list[Cell]:
    """Every cell of the suite, in run order: central pre-training first (for the tasks that fine-tune)."""
    cells: list[Cell] = []
    for exp in suite["experiments"]:
        for task in exp.get("tasks") or suite["tasks"]:
            for scenario in scenario_names(suite, exp.get("scenarios")):
                for strategy in exp["strategies"]:
                    if not _applies(suite, task, scenario, strategy):
                        continue
                    cells += [
                        Cell(task, scenario, strategy, exp.get("init", "scratch"), s)
                        for s in exp.get("seeds") or suite["seeds"]
                    ]
    pre = suite.get("pretraining") or {}
    tasks = dict.fromkeys(c.task for c in cells if c.init == "pretrained")
    first = [
        Cell(t, PRETRAINING, pre.get("strategy", "centralized"), "scratch", pre.get("seed", 0)) for t in tasks
    ]
    return list(dict.fromkeys(first + cells))  # unique, order kept


def pretraining_cell(suite: Mapping[str, Any], task: str) -> Cell:
    pre = suite["pretraining"]
    return Cell(task, PRETRAINING, pre.get("strategy", "centralized"), "scratch", pre.get("seed", 0))


def _expand_globs(names: Sequence[str], sites_dir: Path) -> list[str]:
    """Site names of a scenario; a pattern (``partition_*``: FeTS's institutions, as many as the download
    has) stands for the matching site folders, in sorted order."""
    out = []
    for name in names:
        if any(c in name for c in "*?["):
            out += sorted(p.name for p in sites_dir.glob(name) if p.is_dir()) if sites_dir.is_dir() else []
        else:
            out.append(name)
    return out


def simulate_kwargs(suite: Mapping[str, Any], cell: Cell, workdir: Path) -> dict[str, Any]:
    """The :func:`simulate` arguments of a cell: suite settings, then the task's, then the variant's."""
    from omnifm_monai.fl.bundle import bundle_task

    task = suite["tasks"][cell.task]
    variant = (suite.get("variants") or {}).get(cell.strategy, {"strategy": cell.strategy})
    sites_dir = (
        workdir / "sites" / task["data"] if "data" in task else workdir / "sites"
    )  # prepared: one root each
    bundle = ROOT / task["bundle"]
    names, unseen = scenario_sites(suite, cell.scenario)
    names = _expand_globs(names, sites_dir)
    datalist = bundle_task(bundle)
    sites = [
        s for s in names if (sites_dir / s / f"{datalist}.json").is_file()
    ]  # e.g. CT has no segmentation labels
    if (
        cell.scenario != PRETRAINING
        and not cell.scenario.startswith(UNSEEN)
        and _global_model(suite, cell.strategy)
    ):
        unseen += list(suite.get("real_sites") or [])  # real volumes, scored as they are by the global model
    unseen = [s for s in unseen if (sites_dir / s / f"{datalist}.json").is_file()]
    if not sites:
        raise FileNotFoundError(
            f"cell {cell}: none of the sites {names} under {sites_dir} has a {datalist}.json."
        )
    pre = suite.get("pretraining") or {}
    rounds = (
        pre.get("rounds", suite["rounds"])
        if cell.scenario == PRETRAINING
        else task.get("rounds", suite["rounds"])
    )
    return {
        "bundle": str(bundle),
        "strategy": variant["strategy"],
        "rounds": rounds,
        "local_epochs": task.get("local_epochs", suite["local_epochs"]),
        "lr_schedule": suite.get("lr_schedule", "constant"),
        "output": str(cell.folder(workdir)),
        "sites": {s: str(sites_dir / s) for s in sites},
        "unseen_sites": {s: str(sites_dir / s) for s in unseen},
        "seed": cell.seed,
        "overrides": {
            **(suite.get("overrides") or {}),
            **(task.get("overrides") or {}),
            **(variant.get("overrides") or {}),
        },
        "strategy_options": variant.get("options") or {},
        "init_weights": str(pretraining_cell(suite, cell.task).folder(workdir) / "global_model.pt")
        if cell.init == "pretrained"
        else None,
    }


# ---------------------------------------------------------------------------------------------------- running
def commit() -> str:
    """HEAD's short hash, ``+dirty`` when the code that makes the results differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (
        "+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS) else ""
    )


def run_cell(suite: Mapping[str, Any], cell: Cell, workdir: Path, revision: str) -> list[dict[str, Any]]:
    """Run (or resume) one cell; its rows for the results CSV (an unseen-site cell keeps the test rows of its
    held-out site only; the suite's ``real_sites``, scored by the global model, get the split ``real_test``),
    then the frozen-benchmark record: the suite file's sha256, the cell's settings digest and the data version."""
    from omnifm_monai.fl.simulator import simulate

    kwargs = simulate_kwargs(suite, cell, workdir)
    logging.disable(logging.WARNING)  # the bundles log every iteration; the suite logs one line per cell
    try:
        simulate(**kwargs)
    finally:
        logging.disable(logging.NOTSET)
    rows = []
    real = set(suite.get("real_sites") or [])
    held_out = set(kwargs["unseen_sites"]) - real
    with open(Path(kwargs["output"]) / "metrics.csv") as f:
        for r in csv.DictReader(f):
            if held_out and r["split"] == "test" and r["site"] not in held_out:
                continue
            if r["split"] == "test" and r["site"] in real:
                r["split"] = "real_test"  # beside the sites' own test splits, never averaged with them
            metric = r["metric"].removeprefix("val_")  # the bundles' evaluators name every metric val_*
            rows.append({**dict(zip(CELL_FIELDS, cell.key, strict=True)), "round": r["round"], "site": r["site"],
                         "split": r["split"], "metric": metric, "value": r["value"], "commit": revision})  # fmt: skip
    record = {
        "suite_sha": suite.get("sha256", "unknown"),
        "settings_sha": settings_sha(suite, cell),
        "data_version": data_version(workdir),
    }
    cell_fields = dict(zip(CELL_FIELDS, cell.key, strict=True))
    return rows + [{**cell_fields, "round": -1, "site": "server", "split": "meta", "metric": k, "value": v, "commit": revision}
                   for k, v in record.items()]  # fmt: skip


def data_version(workdir: Path) -> str:
    """The data builder and its arguments, as the build recorded them in ``sites.json``."""
    summary_file = workdir / "sites" / "sites.json"
    if not summary_file.is_file():
        return "unknown"
    summary = json.loads(summary_file.read_text())
    return str(summary.get("builder_version") or summary.get("version") or "reference-sites")


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # workers share the cores instead of oversubscribing them


def _run(args: tuple) -> tuple[Cell, list[dict[str, Any]] | None, str, float]:
    suite, cell, workdir, revision = args
    started = time.perf_counter()
    try:
        return cell, run_cell(suite, cell, workdir, revision), "", time.perf_counter() - started
    except Exception as err:  # one failing cell must not stop the suite; it is reported at the end
        logger.exception("cell %s failed", cell)
        return cell, None, repr(err), time.perf_counter() - started


def completed(results: Path) -> set[tuple[str, ...]]:
    """Cells with rows in the results CSV (a cell's rows are appended in one write when it finishes)."""
    if not results.exists():
        return set()
    with open(results) as f:
        return {tuple(r[k] for k in CELL_FIELDS) for r in csv.DictReader(f)}


def append(results: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS)
    if not results.exists():
        writer.writeheader()
    writer.writerows(rows)
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a", newline="") as f:
        f.write(buffer.getvalue())  # one write per cell: a killed suite leaves whole cells


def check_results(cells: Iterable[Cell], results: Path) -> list[str]:
    """What is wrong with the results of ``cells``: a cell without test rows, or a metric that is not finite."""
    rows: dict[tuple[str, ...], list[dict[str, str]]] = {}
    if results.exists():
        with open(results) as f:
            for r in csv.DictReader(f):
                rows.setdefault(tuple(r[k] for k in CELL_FIELDS), []).append(r)
    problems = []
    for cell in cells:
        found = rows.get(cell.key, [])
        if not any(r["split"] == "test" for r in found):
            problems.append(f"{cell}: no test metrics")
        problems += [f"{cell}: {r['split']} {r['metric']} at round {r['round']} site {r['site']} is {r['value']}"
                     for r in found if r["split"] != "meta" and not math.isfinite(float(r["value"]))]  # fmt: skip
    return problems


def matches(cell: Cell, filters: Mapping[str, set[str]]) -> bool:
    return all(str(getattr(cell, k)) in v for k, v in filters.items())


def parse_only(only: Sequence[str]) -> dict[str, set[str]]:
    """``["task=segmentation", "strategy=fedavg,omnifm"]`` -> ``{"task": {...}, "strategy": {...}}``."""
    filters: dict[str, set[str]] = {}
    for item in only:
        key, sep, values = item.partition("=")
        if not sep or key not in CELL_FIELDS:
            raise ValueError(f"--only {item!r}: expected KEY=VALUE[,VALUE...] with KEY one of {CELL_FIELDS}.")
        filters.setdefault(key, set()).update(values.split(","))
    return filters


def prepare_data(suite: Mapping[str, Any], sites_dir: Path, data_root: str | Path | None) -> None:
    """A suite whose data the user downloads: each of ``data.datasets`` (``format``, ``input`` below
    ``data_root``, and :func:`~omnifm_monai.data.prepare.prepare`'s other options) into ``sites_dir/<name>``."""
    from omnifm_monai.data.prepare import prepare

    if data_root is None:
        raise ValueError(f"suite {suite['name']} reads downloaded datasets: pass --data_root DIR.")
    datasets = suite["data"]["datasets"]
    for name, spec in datasets.items():
        inputs = ",".join(str(Path(data_root) / p.strip()) for p in str(spec["input"]).split(","))
        options = {k: v for k, v in spec.items() if k not in ("format", "input")}
        prepare(spec["format"], inputs, sites_dir / name, **options)
    (sites_dir / "sites.json").write_text(
        json.dumps({"builder_version": "prepare", "datasets": datasets}, indent=1)
    )


def run_suite(
    suite: Mapping[str, Any],
    workdir: Path,
    results: Path,
    only: Sequence[str] = (),
    workers: int = 1,
    data_root: str | Path | None = None,
) -> list[str]:
    """Run the selected cells that are not in ``results`` yet; returns the problems :func:`check_results` finds."""
    from omnifm_monai import data

    filters = parse_only(only)
    cells = expand(suite)
    selected = [c for c in cells if matches(c, filters)]
    needed = {pretraining_cell(suite, c.task) for c in selected if c.init == "pretrained"}
    selected = [c for c in cells if c in selected or c in needed]
    done = completed(results)
    todo = [c for c in selected if c.key not in done]
    logger.info(
        "suite %s: %d cells selected, %d already in %s, %d to run",
        suite["name"],
        len(selected),
        len(selected) - len(todo),
        results,
        len(todo),
    )
    sites_dir = workdir / "sites"
    if todo and not (sites_dir / "sites.json").is_file() and suite["data"].get("builder") == "prepare":
        prepare_data(suite, sites_dir, data_root)
    elif todo and not (sites_dir / "sites.json").is_file():
        every_site = [s for sites in suite["scenarios"].values() for s in sites]
        every_site += (suite.get("pretraining") or {}).get("sites", [])
        every_site += suite.get("real_sites") or []
        every_site = list(dict.fromkeys(every_site))
        settings = dict(suite["data"])
        build = getattr(data, settings.pop("builder", "build_reference_sites"))
        build(sites_dir, sites=every_site, overwrite=True, **settings)
    revision, failed = commit(), {}
    threads = max(1, (os.cpu_count() or 1) // workers)
    # pre-training first: the fine-tuning cells load its weights
    waves = [[c for c in todo if c.scenario == PRETRAINING], [c for c in todo if c.scenario != PRETRAINING]]
    finished, started = 0, time.perf_counter()
    for wave in waves:
        jobs = [(suite, c, workdir, revision) for c in wave]
        if workers == 1:
            _worker_init(threads)
            outcomes: Iterable = map(_run, jobs)
        else:
            pool = ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(threads,))
            outcomes = (f.result() for f in as_completed([pool.submit(_run, j) for j in jobs]))
        for cell, rows, error, seconds in outcomes:
            finished += 1
            if rows is None:
                failed[str(cell)] = error
            else:
                append(results, rows)
            elapsed = time.perf_counter() - started
            logger.info(
                "[%d/%d] %s %s in %.1fs (elapsed %.0fs, left about %.0fs)",
                finished,
                len(todo),
                cell,
                "failed" if rows is None else "done",
                seconds,
                elapsed,
                elapsed / finished * (len(todo) - finished),
            )
        if workers > 1:
            pool.shutdown()
    return [f"{c}: failed: {e}" for c, e in failed.items()] + check_results(selected, results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default="quick", help="suite name under benchmarks/suites/ or a YAML path")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="KEY=V1,V2 with KEY in task, scenario, strategy, init, seed",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="cells run in parallel (each gets cores / workers threads)"
    )
    parser.add_argument(
        "--workdir", help="run folders and reference data (default outputs/benchmarks/<suite>)"
    )
    parser.add_argument("--results", help="results CSV (default benchmarks/results/<suite>.csv)")
    parser.add_argument(
        "--data_root", help="the downloaded datasets of a suite built by prepare (e.g. paper)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    suite = load_suite(args.suite)
    workdir = Path(args.workdir or ROOT / "outputs" / "benchmarks" / suite["name"])
    results = Path(args.results or ROOT / "benchmarks" / "results" / f"{suite['name']}.csv")
    problems = run_suite(suite, workdir, results, args.only, args.workers, args.data_root)
    for problem in problems:
        logger.error(problem)
    logger.info(
        "%s: %s",
        results,
        "every selected cell ran, every metric finite" if not problems else f"{len(problems)} problem(s)",
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
