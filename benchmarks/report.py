"""Tables and plots of a benchmark suite's results CSV (written by ``benchmarks/run.py``).

    python benchmarks/report.py --suite default [--results CSV] [--output benchmarks/results/default.md] [--plots docs/benchmarks]

Every number is a task's metric (the suite's ``metric``, the headline, higher is better; ``also`` lists more) on
each site's **test** split after the last round, averaged over sites, then mean ± std over seeds. Writes a
markdown report and PNG plots:

* the frozen-benchmark record (suite file sha256 and data builder version of the ``meta`` rows);
* a summary against the targets, and which strategies beat a task's ``baseline_variant`` (e.g. image-blind VQA);
* "Not converged": every (task, scenario, strategy, init) whose validation curve still rises at the end
  (:func:`convergence`), marked † in every table;
* per task and scenario: per-site columns, the site average, the worst site and the gain over Local
  (FLamby-style, :func:`site_judgement`), cost per round; the ``also`` metrics; the held-out sites of the
  ``unseen_site/<site>`` scenarios in one table; fine-tuning and ablation tables;
* plots: validation curves per round, per-site bars, OmniFM's diagnostics per round (``diagnostics.py``) and,
  when the run folders are there, a qualitative figure per task.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diagnostics  # noqa: E402
from run import ROOT, Cell, load_suite, settings_sha  # noqa: E402

BASELINE_EXCLUDED = ("omnifm", "centralized")  # the best baseline is the best federated or local strategy
BAR_STRATEGIES = ("local", "fedavg", "fedprox", "fedbn", "ditto", "feddg", "centralized", "omnifm")
CURVE_STRATEGIES = (
    "local",
    "centralized",
    "fedavg",
    "fedbn",
    "fedper",
    "ditto",
    "scaffold",
    "feddg",
    "omnifm",
)
NAMES = {"local": "Local", "centralized": "Centralized", "fedavg": "FedAvg", "fedprox": "FedProx", "fedbn": "FedBN",
         "fedper": "FedPer", "fedrep": "FedRep", "ditto": "Ditto", "scaffold": "SCAFFOLD", "feddyn": "FedDyn",
         "moon": "MOON", "fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi", "feddg": "FedDG", "harmofl": "HarmoFL",
         "omnifm": "**OmniFM**"}  # fmt: skip
UNSEEN = (
    "unseen_site"  # scenarios unseen_site/<site> hold the held-out site's test rows; pooled under this name
)
RELATIVE_SCALE = ("psnr",)  # metrics without a fixed range: 1 % of their scale is 1 % of the value
RECORD = {"suite_sha": "suite file sha256", "data_version": "data builder"}  # the `meta` rows
DAGGER = "†"

logger = logging.getLogger("omnifm_benchmark")

Group = tuple[str, str, str, str]  # (task, scenario, strategy, init): a cell without its seed


class Results:
    """The results CSV indexed by cell key (task, scenario, strategy, init, seed).

    Reads ``test`` rows (every metric, per site), ``validation`` rows of each task's main metric (the curves),
    ``round`` rows ``seconds`` / ``upload_bytes`` (the cost), ``diagnostics`` rows (per round and site) and
    ``meta`` rows (``suite_sha`` / ``data_version``, the value a string). The cells of the scenarios
    ``unseen_site/<site>`` are also pooled under the scenario ``unseen_site``: one test site per held-out site.
    """

    def __init__(self, path: Path, metrics: Mapping[str, str]) -> None:
        self.metrics = metrics  # task -> main metric
        self.tests: dict[str, dict[tuple, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
        self.curve: dict[tuple, dict[int, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )  # round -> sites
        self.cost: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.diag: dict[tuple, dict[str, dict[int, list[float]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )  # metric -> round -> sites
        self.meta: dict[str, dict[str, set[tuple]]] = defaultdict(lambda: defaultdict(set))  # value -> cells
        self.real: dict[tuple, dict[str, float]] = defaultdict(dict)  # cell key -> real site -> main metric
        self.commits: set[str] = set()
        unreadable = 0
        with open(path) as f:
            for r in csv.DictReader(f):
                key = (r["task"], r["scenario"], r["strategy"], r["init"], int(r["seed"]))
                self.commits.add(r["commit"])
                if r["split"] == "meta":
                    self.meta[r["metric"]][r["value"]].add(key)
                    continue
                try:
                    value = float(r["value"])
                except ValueError:
                    unreadable += 1
                    continue
                pooled = r["scenario"].startswith(UNSEEN) and r["scenario"] != UNSEEN
                for k in (key, (key[0], UNSEEN, *key[2:])) if pooled else (key,):
                    self._add(k, r, value)
        if unreadable:
            logger.warning("%s: %d rows with a value that is not a number were skipped", path, unreadable)
        self.test = {k: sites for m in set(metrics.values()) for k, sites in self.tests[m].items()
                     if metrics.get(k[0]) == m}  # fmt: skip  # cell key -> site -> main metric

    def _add(self, key: tuple, r: Mapping[str, str], value: float) -> None:
        split, metric = r["split"], r["metric"]
        if split == "round" and metric in ("seconds", "upload_bytes"):
            self.cost[key][metric].append(value)
        elif split == "test":
            self.tests[metric][key][r["site"]] = value
        elif split == "validation" and metric == self.metrics.get(r["task"]):
            self.curve[key][int(r["round"])].append(value)
        elif split == "diagnostics":
            self.diag[key][metric][int(r["round"])].append(value)
        elif split == "real_test" and metric == self.metrics.get(r["task"]):
            self.real[key][r["site"]] = value

    def seeds(self, task: str, scenario: str, strategy: str, init: str = "scratch") -> list[tuple]:
        return sorted(k for k in self.test if k[:4] == (task, scenario, strategy, init))

    def site_mean(self, task, scenario, strategy, init="scratch", metric=None) -> list[float]:
        """One value per seed: the metric (default the main one) averaged over the sites."""
        test = self.tests[metric] if metric else self.test
        keys = self.seeds(task, scenario, strategy, init)
        return [statistics.fmean(test[k].values()) for k in keys if test.get(k)]

    def per_site(self, task, scenario, strategy, init="scratch", metric=None) -> dict[str, list[float]]:
        test = self.tests[metric] if metric else self.test
        out: dict[str, list[float]] = defaultdict(list)
        for k in self.seeds(task, scenario, strategy, init):
            for site, value in test.get(k, {}).items():
                out[site].append(value)
        return out

    def cost_per_round(self, task, scenario, strategy, init="scratch") -> tuple[float, float]:
        """Wall seconds per round and MB all sites upload per round, averaged over rounds and seeds."""
        cost = [self.cost[k] for k in self.seeds(task, scenario, strategy, init) if self.cost[k]["seconds"]]
        if not cost:
            return float("nan"), float("nan")
        seconds = statistics.fmean(v for c in cost for v in c["seconds"])
        return seconds, statistics.fmean(sum(c["upload_bytes"]) / len(c["seconds"]) for c in cost) / 1e6

    def strategies(self, task: str, scenario: str, init: str = "scratch") -> list[str]:
        return sorted({k[2] for k in self.test if k[:2] == (task, scenario) and k[3] == init})


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def bold(text: str, yes: bool) -> str:
    return f"**{text}**" if yes else text


def fmt(values: Sequence[float], digits: int, best: bool = False, mark: str = "") -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return bold(f"{m:.{digits}f} ± {s:.{digits}f}", best) + mark


def best_of(candidates: Iterable[str], score: Callable[[str], float | None]) -> str | None:
    """The candidate with the highest score (None scores left out)."""
    scores = {c: score(c) for c in candidates}
    return max((c for c in scores if scores[c] is not None), key=scores.get, default=None)


def best_mean(candidates: Iterable[str], values: Mapping[str, Sequence[float]]) -> str | None:
    """The candidate with the highest mean of ``values`` (those without values left out)."""
    return best_of(candidates, lambda s: statistics.fmean(values[s]) if values.get(s) else None)


def name(strategy: str) -> str:
    return NAMES.get(strategy, strategy)


def label(strategy: str, baseline: str | None = None) -> str:
    """A table row's name; the task's baseline variant is set apart."""
    return f"*{strategy}* (baseline variant)" if strategy == baseline else name(strategy)


def digits(metric: str) -> int:
    return 2 if metric in RELATIVE_SCALE else 3


def mark(flagged: Collection[Group], task: str, scenario: str, strategy: str, init: str = "scratch") -> str:
    return f" {DAGGER}" if (task, scenario, strategy, init) in flagged else ""


# -------------------------------------------------------------------------------------------------- judging
def tolerance(metric: str, value: float) -> float:
    """1 % of the metric's scale: 0.01 for Dice, accuracy and other [0, 1] metrics, 1 % of the value for PSNR."""
    return 0.01 * abs(value) if metric in RELATIVE_SCALE else 0.01


def window_start(rounds: int) -> int:
    """Index of the round that opens the last 20 % of ``rounds`` (at least the last 2): ceil(0.8 R) - 1."""
    return max(min(-(-4 * rounds // 5) - 1, rounds - 2), 0)


def convergence(res: Results) -> dict[Group, dict[str, Any]]:
    """Whether each (task, scenario, strategy, init) is still rising when training stops.

    Reads ``res.curve`` (validation main metric per round and site) and ``res.test`` (the final test main metric).
    Per cell (seed) the gain is the site-averaged validation metric at the last round minus its value at the round
    that opens the last 20 % of rounds (:func:`window_start`); cells with fewer than 2 rounds are left out. A group
    is flagged when the mean gain over its seeds exceeds max(seed std of its final test metric (site average),
    :func:`tolerance` of that metric's mean). Returns per group: ``gain`` (mean over seeds), ``gains`` (per seed),
    ``threshold``, ``flagged`` and ``window`` (first and last round).
    """
    gains: dict[Group, list[float]] = defaultdict(list)
    last: dict[Group, list[float]] = defaultdict(list)
    window: dict[Group, tuple[int, int]] = {}
    for key, curve in sorted(res.curve.items()):
        rounds = sorted(curve)
        if len(rounds) < 2:
            continue
        first, end = rounds[window_start(len(rounds))], rounds[-1]
        gains[key[:4]].append(statistics.fmean(curve[end]) - statistics.fmean(curve[first]))
        last[key[:4]].append(statistics.fmean(curve[end]))
        window[key[:4]] = (first, end)
    out = {}
    for group, g in gains.items():
        final = res.site_mean(*group)
        level, std = mean_std(final) if final else (statistics.fmean(last[group]), 0.0)
        threshold = max(std, tolerance(res.metrics[group[0]], level))
        gain = statistics.fmean(g)
        out[group] = {"gain": gain, "gains": g, "threshold": threshold, "flagged": gain > threshold,
                      "window": window[group]}  # fmt: skip
    return out


def site_judgement(
    res: Results, task: str, scenario: str, strategy: str, init: str = "scratch", reference: str = "local"
) -> dict[str, Any] | None:
    """FLamby-style per-site judgement of a strategy from its test rows (main metric, seed-mean per site).

    ``worst_site`` / ``worst``: the site with the lowest seed-mean and that mean. ``gain``: per site, the
    strategy's seed-mean minus ``reference``'s, averaged over the ``sites`` both have; ``wins``: on how many of
    them the strategy is higher (no gain for the reference itself, or without its rows). None without test rows.
    """
    means = {site: statistics.fmean(v) for site, v in res.per_site(task, scenario, strategy, init).items()}
    if not means:
        return None
    worst = min(means, key=means.get)
    out: dict[str, Any] = {"worst_site": worst, "worst": means[worst]}
    ref = {site: statistics.fmean(v) for site, v in res.per_site(task, scenario, reference, init).items()}
    common = [site for site in means if site in ref]
    if common and strategy != reference:
        out.update(gain=statistics.fmean(means[s] - ref[s] for s in common),
                   wins=sum(means[s] > ref[s] for s in common), sites=len(common))  # fmt: skip
    return out


def frozen_record(res: Results, suite: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
    """The header sentence naming the suite file sha256 and data builder of the ``meta`` rows, and the warnings:
    a data builder with several values; with ``suite`` and any cell's record, every cell whose recorded settings
    digest (``settings_sha``, :func:`run.settings_sha`) is not the one the suite file gives now, or that has none.
    The suite file's own sha256 may differ between cells (a comment, another task's budget): its values are
    listed, and only a setting that decides a cell's run unfreezes that cell."""
    parts, warnings = [], []
    for metric, what in RECORD.items():
        values = res.meta.get(metric) or {}
        parts.append(f"{what} " + (", ".join(f"`{v}`" for v in sorted(values)) or "not recorded"))
        if len(values) > 1 and (metric != "suite_sha" or suite is None):
            counts = ", ".join(f"`{v}` ({len(cells)} cells)" for v, cells in sorted(values.items()))
            warnings.append(f"**Warning: these results mix {len(values)} values of the {what}: {counts}; "
                            "they do not all come from the same frozen benchmark.**")  # fmt: skip
    recorded = {cell: v for v, cells in (res.meta.get("settings_sha") or {}).items() for cell in cells}
    if suite is not None and not recorded:
        parts.append("cell settings not recorded")
    elif suite is not None:
        cells = sorted(k for k in res.test if k[1] != UNSEEN)  # not the pooled held-out sites
        stale = [k for k in cells if recorded.get(k) != settings_sha(suite, Cell(*k))]
        if stale:
            named = ", ".join("/".join(map(str, k)) for k in stale[:6]) + (", ..." if len(stale) > 6 else "")
            warnings.append(f"**Warning: {len(stale)} of {len(cells)} cells ran with settings other than the suite "
                            f"file's now, or recorded none: {named}.**")  # fmt: skip
        else:
            parts.append(f"every one of the {len(cells)} cells ran with the settings of the suite file as it is "
                         "now (data, budget, bundle overrides, sites, variant: `settings_sha` per cell)")  # fmt: skip
    return "Frozen benchmark: " + "; ".join(parts) + ".", warnings


# -------------------------------------------------------------------------------------------------- tables
def rows_of(res: Results, task: str, scenarios: Sequence[str], order: Sequence[str], baseline: str | None):
    """The ranked strategies of ``order`` with results, and all table rows: those plus the baseline variant."""
    has = lambda s: any(res.seeds(task, sc, s) for sc in scenarios)  # noqa: E731
    ranked = [s for s in order if s != baseline and has(s)]
    return ranked, ranked + ([baseline] if baseline and has(baseline) else [])


def scenario_table(
    res: Results,
    task: str,
    scenario: str,
    order: Sequence[str],
    flagged: Collection[Group] = (),
    baseline: str | None = None,
) -> list[str]:
    """Strategies x (sites, average, worst site, gain over Local, s/round, MB/round): mean ± std over seeds, best
    mean of each column in bold (the baseline variant's row is not ranked), † on a still-rising average."""
    d = digits(res.metrics[task])
    ranked, rows = rows_of(res, task, [scenario], order, baseline)
    per_site = {s: res.per_site(task, scenario, s) for s in rows}
    sites = list(dict.fromkeys(site for s in rows for site in per_site[s]))
    columns = {site: {s: per_site[s].get(site, []) for s in rows} for site in sites}
    columns["average"] = {s: res.site_mean(task, scenario, s) for s in rows}
    best = {c: best_mean(ranked, v) for c, v in columns.items()}
    judged = {s: site_judgement(res, task, scenario, s) or {} for s in rows}
    best_worst = best_of(ranked, lambda s: judged[s].get("worst"))
    best_gain = best_of(ranked, lambda s: judged[s].get("gain"))
    gain_column = any("gain" in j for j in judged.values())
    header = [*sites, "average", "worst site", *(["gain over Local (sites above)"] * gain_column)]
    lines = [f"| strategy | {' | '.join(header)} | s/round | MB/round |", "|---" * (len(header) + 3) + "|"]
    for s in rows:
        cells = [fmt(columns[c][s], d, best[c] == s, mark(flagged, task, scenario, s) if c == "average" else "")
                 for c in columns]  # fmt: skip
        j = judged[s]
        cells.append(bold(f"{j['worst']:.{d}f} ({j['worst_site']})", best_worst == s) if j else "–")
        if gain_column:
            gain = f"{j['gain']:+.{d}f} ({j['wins']}/{j['sites']})" if "gain" in j else "–"
            cells.append(bold(gain, best_gain == s))
        seconds, mb = res.cost_per_round(task, scenario, s)
        lines.append(f"| {label(s, baseline)} | {' | '.join(cells)} | {seconds:.1f} | {mb:.2f} |")
    return lines


def metrics_table(
    res: Results,
    task: str,
    scenario: str,
    order: Sequence[str],
    metrics: Sequence[str],
    flagged: Collection[Group] = (),
    baseline: str | None = None,
) -> list[str]:
    """Strategies x metrics (the headline first, then the task's ``also``), site average, mean ± std over seeds,
    best in bold; metrics without test rows are left out, and so is the table when only the headline is left."""
    d = digits(res.metrics[task])
    ranked, rows = rows_of(res, task, [scenario], order, baseline)
    values = {m: {s: res.site_mean(task, scenario, s, metric=m) for s in rows} for m in metrics}
    metrics = [m for m in metrics if any(values[m].values())]
    if len(metrics) < 2:
        return []
    best = {m: best_mean(ranked, values[m]) for m in metrics}
    headline = res.metrics[task]
    lines = [f"| strategy | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|"]
    for s in rows:
        cells = [fmt(values[m][s], d, best[m] == s, mark(flagged, task, scenario, s) if m == headline else "")
                 for m in metrics]  # fmt: skip
        lines.append(f"| {label(s, baseline)} | {' | '.join(cells)} |")
    return lines


def margin(
    res: Results, task: str, scenario: str, init: str = "scratch", exclude: Collection[str] = ()
) -> dict[str, Any] | None:
    """OmniFM's mean minus the best baseline's (Local and federated strategies; not Centralized, not OmniFM's
    variants, not the strategies in ``exclude``)."""
    omni = res.site_mean(task, scenario, "omnifm", init)
    baselines = {s: res.site_mean(task, scenario, s, init) for s in res.strategies(task, scenario, init)
                 if s not in BASELINE_EXCLUDED and s not in exclude and not s.startswith("omnifm")}  # fmt: skip
    baselines = {s: v for s, v in baselines.items() if v}
    if not omni or not baselines:
        return None
    best = max(baselines, key=lambda s: statistics.fmean(baselines[s]))
    (m, s), (bm, bs) = mean_std(omni), mean_std(baselines[best])
    central = res.site_mean(task, scenario, "centralized", init)
    fedavg = res.site_mean(task, scenario, "fedavg", init)
    return {"omnifm": (m, s), "best": best, "best_value": (bm, bs), "margin": m - bm,
            "fedavg": mean_std(fedavg) if fedavg else None,
            "centralized": mean_std(central) if central else None}  # fmt: skip


def summary_table(
    res: Results,
    tasks: Sequence[str],
    scenarios: Sequence[str],
    flagged: Collection[Group] = (),
    exclude: Collection[str] = (),
) -> list[str]:
    """One row per task and scenario; entries still rising are marked †, and a last line lists them."""
    lines = ["| task | scenario | OmniFM | best baseline | margin | beats it by > std | FedAvg | above FedAvg | Centralized | OmniFM / Centralized (>= 0.95) |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    yes_no = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    rising = []
    for task in tasks:
        d = digits(res.metrics[task])
        for scenario in scenarios:
            m = margin(res, task, scenario, exclude=exclude)
            if m is None:
                continue
            dag = {
                s: mark(flagged, task, scenario, s) for s in ("omnifm", m["best"], "fedavg", "centralized")
            }
            rising += [f"{name(s).strip('*')} ({task}, {scenario})" for s, x in dag.items() if x]
            (om, os_), (bm, bs) = m["omnifm"], m["best_value"]
            wins = m["margin"] > max(os_, bs)
            fed, cen = m["fedavg"], m["centralized"]
            lines.append(
                f"| {task} | {scenario} | {om:.{d}f} ± {os_:.{d}f}{dag['omnifm']} | "
                f"{name(m['best'])} {bm:.{d}f} ± {bs:.{d}f}{dag[m['best']]} | {m['margin']:+.{d}f} | {yes_no(wins)} | "
                f"{f'{fed[0]:.{d}f}' + dag['fedavg'] if fed else '–'} | {yes_no(om > fed[0]) if fed else '–'} | "
                f"{f'{cen[0]:.{d}f}' + dag['centralized'] if cen else '–'} | "
                f"{f'{om / cen[0]:.3f} ({yes_no(om >= 0.95 * cen[0])})' if cen and cen[0] else '–'} |"
            )
    note = ", ".join(dict.fromkeys(rising)) or "none"
    return [
        *lines,
        "",
        f"{DAGGER} still rising at the last round (see *Not converged*); in this table: {note}.",
    ]


def published_table(res: Results, published: Mapping[str, Mapping[str, Any]], scenario: str) -> list[str]:
    """Our site-averaged test means beside the paper's reported numbers (the suite's ``published`` block: per
    task ``scale`` (ours x scale is the paper's unit), ``fedavg``, ``best_baseline`` ([name, value]),
    ``omnifm``, ``note``), two decimals; a task without results shows "not run"."""
    lines = ["| task | metric | FedAvg: ours / paper | best baseline: ours / paper | OmniFM: ours / paper | OmniFM minus best baseline: ours / paper | protocol differences |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip

    def num(value: float | None, scale: float = 1.0, sign: str = "", missing: str = "not run") -> str:
        return f"{value * scale:{sign}.2f}" if value is not None else missing

    for task, paper in published.items():
        scale, ran = paper.get("scale", 1), task in res.metrics
        m = margin(res, task, scenario) if ran else None
        fedavg, omnifm = (res.site_mean(task, scenario, s) if ran else [] for s in ("fedavg", "omnifm"))
        p_name, p_best = paper.get("best_baseline") or (None, None)
        p_omnifm = paper.get("omnifm")
        p_gap = p_omnifm - p_best if p_best is not None and p_omnifm is not None else None
        best = f"{num(m['best_value'][0], scale)} ({name(m['best']).strip('*')})" if m else "not run"
        lines.append(
            f"| {task} | {res.metrics.get(task, '')} | "
            f"{num(statistics.fmean(fedavg) if fedavg else None, scale)} / {num(paper.get('fedavg'), missing='–')} | "
            f"{best} / {num(p_best, missing='–')}{f' ({p_name})' if p_name else ''} | "
            f"{num(statistics.fmean(omnifm) if omnifm else None, scale)} / {num(p_omnifm, missing='–')} | "
            f"{num(m['margin'] if m else None, scale, '+')} / {num(p_gap, sign='+', missing='–')} | "
            f"{paper.get('note', '')} |"
        )
    return lines


def baseline_lines(
    res: Results, task: str, scenarios: Sequence[str], order: Sequence[str], baseline: str
) -> list[str]:
    """Per scenario: the baseline variant's site average and which strategies have a higher mean."""
    d, lines = digits(res.metrics[task]), []
    for scenario in scenarios:
        ref = res.site_mean(task, scenario, baseline)
        if not ref:
            continue
        ranked, _ = rows_of(res, task, [scenario], order, baseline)
        above = [
            name(s).strip("*")
            for s in ranked
            if statistics.fmean(res.site_mean(task, scenario, s)) > statistics.fmean(ref)
        ]
        lines.append(f"- {task}, {scenario}: `{baseline}` {fmt(ref, d)}; above it: {', '.join(above) or 'none'}"
                     f" ({len(above)}/{len(ranked)}).")  # fmt: skip
    return lines


def convergence_table(
    conv: Mapping[Group, Mapping[str, Any]], res: Results, tasks: Sequence[str], scenarios: Sequence[str]
) -> list[str]:
    """The flagged groups of ``conv`` in ``tasks`` and ``scenarios`` (in their order), with gains and thresholds."""
    shown = [g for g in conv if g[0] in tasks and g[1] in scenarios]
    rising = sorted(
        (g for g in shown if conv[g]["flagged"]),
        key=lambda g: (tasks.index(g[0]), scenarios.index(g[1]), g[3], g[2]),
    )
    judged = len(shown)
    if not rising:
        return [f"Still rising: none of the {judged} (task, scenario, strategy, init) judged."]
    lines = [f"Still rising: {len(rising)} of the {judged} (task, scenario, strategy, init) judged.", "",
             "| task | scenario | strategy | init | rounds | gain (mean over seeds) | gain per seed | threshold |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in rising:
        c, d = conv[g], digits(res.metrics[g[0]])
        seeds = ", ".join(f"{x:+.{d}f}" for x in c["gains"])
        lines.append(f"| {g[0]} | {g[1]} | {name(g[2])} | {g[3]} | {c['window'][0] + 1}→{c['window'][1] + 1} | "
                     f"{c['gain']:+.{d}f} | {seeds} | {c['threshold']:.{d}f} |")  # fmt: skip
    return lines


def compact_table(
    res: Results,
    task: str,
    scenarios: Sequence[str],
    order: Sequence[str],
    flagged: Collection[Group] = (),
    baseline: str | None = None,
) -> list[str]:
    """Strategies x scenarios (site average), best in bold, with the first scenario's cost per round."""
    metric, d = res.metrics[task], digits(res.metrics[task])
    ranked, rows = rows_of(res, task, scenarios, order, baseline)
    means = {sc: {s: res.site_mean(task, sc, s) for s in rows} for sc in scenarios}
    best = {sc: best_mean(ranked, means[sc]) for sc in scenarios}
    lines = [f"| {task} ({metric}) | {' | '.join(scenarios)} | s/round | MB/round |",
             "|---" * (len(scenarios) + 3) + "|"]  # fmt: skip
    for s in rows:
        seconds, mb = res.cost_per_round(task, scenarios[0], s)
        cells = [fmt(means[sc][s], d, best[sc] == s, mark(flagged, task, sc, s)) for sc in scenarios]
        lines.append(f"| {label(s, baseline)} | {' | '.join(cells)} | {seconds:.1f} | {mb:.2f} |")
    return lines


def update_readme(readme: Path, block: Sequence[str]) -> None:
    """Replace the text between the benchmark markers of ``readme`` with ``block``."""
    start, end = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} markers to put the benchmark tables between.")
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + "\n".join(block) + "\n" + end + rest.split(end, 1)[1])


def real_table(res: Results, task: str, scenario: str, order: Sequence[str]) -> list[str]:
    """The global model of each strategy on the real volumes (the suite's ``real_sites``), mean ± std over seeds."""
    cells = {k: v for k, v in res.real.items() if k[:2] == (task, scenario) and k[3] == "scratch"}
    sites = sorted({site for v in cells.values() for site in v})
    strategies = [s for s in order if any(k[2] == s for k in cells)]
    if not sites or not strategies:
        return []
    d = digits(res.metrics[task])
    lines = ["| strategy | " + " | ".join(sites) + " |", "|---|" + "---|" * len(sites)]
    for s in strategies:
        values = [[v[site] for k, v in cells.items() if k[2] == s and site in v] for site in sites]
        lines.append(f"| {name(s)} | " + " | ".join(fmt(v, d) for v in values) + " |")
    return lines


def finetune_table(res: Results, task: str, scenario: str, flagged: Collection[Group] = ()) -> list[str]:
    strategies = res.strategies(task, scenario, "pretrained")
    if not strategies:
        return []
    d = digits(res.metrics[task])
    lines = ["| strategy | from scratch | fine-tuned | change |", "|---|---|---|---|"]
    for s in strategies:
        a, b = res.site_mean(task, scenario, s), res.site_mean(task, scenario, s, "pretrained")
        change = f"{statistics.fmean(b) - statistics.fmean(a):+.{d}f}" if a and b else "–"
        lines.append(f"| {name(s)} | {fmt(a, d, mark=mark(flagged, task, scenario, s))} | "
                     f"{fmt(b, d, mark=mark(flagged, task, scenario, s, 'pretrained'))} | {change} |")  # fmt: skip
    return lines


def ablation_table(
    res: Results,
    tasks: Sequence[str],
    scenario: str,
    variants: Sequence[str],
    flagged: Collection[Group] = (),
) -> list[str]:
    rows = ["omnifm", *variants]
    present = [t for t in tasks if any(res.seeds(t, scenario, v) for v in variants)]
    if not present:
        return []
    lines = [f"| variant | {' | '.join(present)} |", "|---" * (len(present) + 1) + "|"]
    for v in rows:
        cells = []
        for t in present:
            values, full = res.site_mean(t, scenario, v), res.site_mean(t, scenario, "omnifm")
            d = digits(res.metrics[t])
            delta = (
                f" ({statistics.fmean(values) - statistics.fmean(full):+.{d}f})"
                if values and full and v != "omnifm"
                else ""
            )
            cells.append(fmt(values, d, mark=mark(flagged, t, scenario, v)) + delta)
        lines.append(f"| {'OmniFM (all parts)' if v == 'omnifm' else v} | {' | '.join(cells)} |")
    return lines


# --------------------------------------------------------------------------------------------------- plots
def plot_curves(res: Results, task: str, scenarios: Sequence[str], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.2 * len(scenarios), 3.6), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        for s in CURVE_STRATEGIES:
            keys = res.seeds(task, scenario, s)
            if not keys:
                continue
            rounds = sorted(set.intersection(*(set(res.curve[k]) for k in keys)))
            means = [statistics.fmean(statistics.fmean(res.curve[k][r]) for k in keys) for r in rounds]
            ax.plot(
                [r + 1 for r in rounds],
                means,
                marker="o",
                ms=3,
                lw=2.4 if s == "omnifm" else 1.2,
                label=name(s).strip("*"),
                color="black" if s == "omnifm" else None,
                ls="-" if s in ("omnifm", "fedavg", "local", "centralized") else "--",
            )
        ax.set(
            title=f"{task}: {scenario}", xlabel="round", ylabel=f"validation {res.metrics[task]} (site mean)"
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sites(res: Results, task: str, scenario: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    strategies = [s for s in BAR_STRATEGIES if res.seeds(task, scenario, s)]
    sites = list(dict.fromkeys(site for s in strategies for site in res.per_site(task, scenario, s)))
    width = 0.8 / max(len(strategies), 1)
    fig, ax = plt.subplots(figsize=(1.4 * len(sites) + 2.5, 3.6))
    for i, s in enumerate(strategies):
        per_site = res.per_site(task, scenario, s)
        stats = [mean_std(per_site[site]) if per_site.get(site) else (np.nan, 0) for site in sites]
        ax.bar(np.arange(len(sites)) + i * width, [m for m, _ in stats], width, yerr=[sd for _, sd in stats],
               label=name(s).strip("*"), capsize=2)  # fmt: skip
    ax.set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites, fontsize=8)
    values = [v for s in strategies for vs in res.per_site(task, scenario, s).values() for v in vs]
    if values:
        lo, hi = min(values), max(values)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-6), hi + 0.1 * (hi - lo + 1e-6))
    ax.set(title=f"{task}: {scenario}, test {res.metrics[task]} per site (mean ± std over seeds)")
    if strategies:
        ax.legend(fontsize=7, ncol=len(strategies), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def qualitative(suite: Mapping[str, Any], task: str, workdir: Path, path: Path) -> Path | None:
    """Input / prediction / target on one test slice per site, FedAvg vs OmniFM (seed 0, cross-modality)."""
    from qualitative import qualitative_figure

    scenario = next(iter(suite["scenarios"]))
    seed = suite["seeds"][0]
    runs = {
        name(s).strip("*"): Cell(task, scenario, s, "scratch", seed).folder(workdir)
        for s in ("fedavg", "omnifm")
    }
    if not all((f / "checkpoint.pt").is_file() for f in runs.values()):
        logger.warning("no run folders for the %s qualitative figure under %s; skipped", task, workdir)
        return None
    logging.disable(logging.WARNING)  # the bundles' workflows log every step of their set-up
    try:
        return qualitative_figure(runs, path)
    finally:
        logging.disable(logging.NOTSET)


# ---------------------------------------------------------------------------------------------------- main
def write_report(
    suite: Mapping[str, Any],
    results: Path,
    output: Path,
    plots: Path,
    workdir: Path | None = None,
    readme: Path | None = None,
) -> Path:
    specs = suite["tasks"]
    metrics = {t: spec["metric"] for t, spec in specs.items()}
    res = Results(results, metrics)
    conv = convergence(res)
    flagged = {g for g, c in conv.items() if c["flagged"]}
    present = {k[:2] for k in res.test}
    regular = [s for s in suite["scenarios"] if not s.startswith(UNSEEN) and any(p[1] == s for p in present)]
    scenarios = regular + ([UNSEEN] if any(p[1] == UNSEEN for p in present) else [])
    tasks = [t for t in specs if any((t, s) in present for s in scenarios)]
    variants = list(suite.get("variants") or {})
    baselines = {t: spec.get("baseline_variant") for t, spec in specs.items()}
    ablations = [v for v in variants if v not in baselines.values()]
    order = list(
        dict.fromkeys(s for exp in suite["experiments"] for s in exp["strategies"] if s not in variants)
    )
    plots.mkdir(parents=True, exist_ok=True)
    rel = lambda p: Path(os.path.relpath(p, output.parent)).as_posix()  # noqa: E731  # links from the report
    pre = suite.get("pretraining") or {}
    command = (
        f"Made by `python benchmarks/run.py --suite {suite['name']} --workers 2` then "
        f"`python benchmarks/report.py --suite {suite['name']}`."
    )
    tuning = (f" Fine-tuning starts from the same task trained centrally ({pre.get('strategy', 'centralized')}) "
              f"on {', '.join(pre.get('sites', []))}." if pre else "")  # fmt: skip
    record, warnings = frozen_record(res, suite)
    for warning in warnings:
        logger.warning(warning.strip("*"))
    record = [record, "", *(line for w in warnings for line in (w, ""))]
    summary = summary_table(res, tasks, scenarios, flagged, variants)
    above = [
        line for t in tasks if baselines[t] for line in baseline_lines(res, t, scenarios, order, baselines[t])
    ]
    if above:
        above = ["Strategies with a site average above the task's baseline variant:", "", *above, ""]
    if suite.get("published"):  # the paper's protocol: its reported numbers beside ours
        above += ["## Beside the paper", "", "The paper's reported numbers (second-hand, from its summary: check "
                  "them before citing) beside this run's, in the paper's units; ours are site-averaged test means "
                  "over the seeds.", "", *published_table(res, suite["published"], scenarios[0] if scenarios
                                                          else next(iter(suite["scenarios"]))), ""]  # fmt: skip
    out = [
        f"# Benchmark: suite `{suite['name']}`", "", command, "", *record,
        f"Results: `{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}`, commit(s) {', '.join(sorted(res.commits))}. "
        f"Test split of every site after the last round; per cell the main metric is averaged over sites, then "
        f"mean ± std over seeds {suite['seeds']}. Budget: {suite['rounds']} rounds x {suite['local_epochs']} local epochs "
        f"(task overrides in `benchmarks/suites/{suite['name']}.yaml`). Best mean per column in bold. "
        f"Worst site: the lowest per-site mean over seeds. Gain over Local: per site the strategy's mean minus "
        f"Local's, averaged over the sites, with the number of sites where the strategy is higher. "
        f"Margin = OmniFM minus the best of Local and the federated baselines. {DAGGER}: still rising (see *Not "
        f"converged*).{tuning}", "",
        "## Summary against the targets", "", *summary, "", *above,
        "## Not converged", "",
        f"Per cell, the gain of the validation main metric (site average) over the last 20 % of rounds (at least the "
        f"last 2); a strategy is still rising ({DAGGER}) when its mean gain over seeds exceeds both the std over seeds "
        f"of its final test metric and 1 % of the metric's scale (0.01 for Dice and accuracy, 1 % of the value for "
        f"PSNR).", "", *convergence_table(conv, res, tasks, scenarios), "",
    ]  # fmt: skip
    for task in tasks:
        baseline = baselines[task]
        out += [f"## {task} (test {metrics[task]})", ""]
        for scenario in (s for s in scenarios if (task, s) in present):
            if scenario == UNSEEN:
                out += ["### unseen site", "", "Each site column: trained on the other sites of its rotation "
                        f"(scenario `{UNSEEN}/<site>`), tested on the held-out site; average over the held-out sites.", ""]  # fmt: skip
            else:
                out += [f"### {scenario}", ""]
            out += [*scenario_table(res, task, scenario, order, flagged, baseline), ""]
            also = metrics_table(res, task, scenario, order, [metrics[task], *(specs[task].get("also") or [])],
                                 flagged, baseline)  # fmt: skip
            if also:
                out += [f"Test metrics ({scenario}, site average):", "", *also, ""]
            real = real_table(res, task, scenario, order)
            if real:
                out += [
                    f"Real images ({scenario}): the global model on the real volumes, never trained on:",
                    "",
                    *real,
                    "",
                ]
            m = margin(res, task, scenario, exclude=variants)
            if m is not None:
                d = digits(metrics[task])
                out += [
                    f"OmniFM minus the best baseline ({name(m['best']).strip('*')}): {m['margin']:+.{d}f}.",
                    "",
                ]
        curves = plot_curves(res, task, regular or scenarios, plots / f"{task}_curves.png")
        bars = plot_sites(res, task, scenarios[0], plots / f"{task}_sites.png")
        out += [f"![{task} curves]({rel(curves)})", "", f"![{task} per site]({rel(bars)})", ""]
        diag = diagnostics.last_round_table(res.diag, task, scenarios, lambda s: name(s).strip("*"))
        if diag:
            figure = diagnostics.plot(res.diag, task, scenarios, plots / f"{task}_diagnostics.png",
                                      lambda s: name(s).strip("*"))  # fmt: skip
            out += ["OmniFM diagnostics at the last round (mean over sites, then mean ± std over seeds):", "", *diag,
                    "", f"![{task} diagnostics]({rel(figure)})", ""]  # fmt: skip
        tune = finetune_table(res, task, scenarios[0], flagged)
        if tune:
            out += [f"Fine-tuning ({scenarios[0]}):", "", *tune, ""]
        if workdir is not None:
            figure = qualitative(suite, task, workdir, plots / f"{task}_qualitative.png")
            if figure is not None:
                out += [f"![{task} qualitative]({rel(figure)})", ""]
    ablation = ablation_table(res, tasks, scenarios[0], ablations, flagged) if tasks else []
    if ablation:
        out += [f"## Ablation ({scenarios[0]}; in brackets: change from full OmniFM)", "", *ablation, ""]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(out))
    if readme is not None:  # the summary and one compact table per task, linking the full report and plots
        link = lambda p: Path(os.path.relpath(p, readme.parent)).as_posix()  # noqa: E731
        block = [command, "", *record, f"Commit(s) {', '.join(sorted(res.commits))}; full tables, per-site results, "
                 f"convergence, fine-tuning and ablation: [{link(output)}]({link(output)}).", "", *summary, "", *above]  # fmt: skip
        for task in tasks:
            block += [*compact_table(res, task, scenarios, order, flagged, baselines[task]), ""]
        block += [" ".join(f"![{t}]({link(plots / f'{t}_curves.png')})" for t in tasks[:2]), ""]
        update_readme(readme, block)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="default")
    parser.add_argument("--results", help="results CSV (default benchmarks/results/<suite>.csv)")
    parser.add_argument("--output", help="markdown report (default benchmarks/results/<suite>.md)")
    parser.add_argument("--plots", help="PNG folder (default docs/benchmarks/<suite>)")
    parser.add_argument(
        "--workdir", help="run folders, for the qualitative figures (default outputs/benchmarks/<suite>)"
    )
    parser.add_argument(
        "--readme", help="also put the summary tables between the benchmark markers of this file"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    suite = load_suite(args.suite)
    results = Path(args.results or ROOT / "benchmarks" / "results" / f"{suite['name']}.csv")
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"{suite['name']}.md")
    plots = Path(args.plots or ROOT / "docs" / "benchmarks" / suite["name"])
    workdir = Path(args.workdir or ROOT / "outputs" / "benchmarks" / suite["name"])
    print(write_report(suite, results, output, plots, workdir, Path(args.readme) if args.readme else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
