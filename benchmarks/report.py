"""Tables and plots of a benchmark suite's results CSV (written by ``benchmarks/run.py``).

    python benchmarks/report.py --suite default [--results CSV] [--output benchmarks/results/default.md] [--plots docs/benchmarks]

Every number is the task's main metric (the suite's ``metric``, higher is better) on each site's **test**
split after the last round, averaged over sites, then mean ± std over seeds. Writes a markdown report (a
summary against the targets, one table per task and scenario with per-site columns, cost, fine-tuning and
ablation tables) and PNG plots: validation curves per round, per-site bars and, when the run folders are
there, a qualitative figure per task.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Cell, load_suite  # noqa: E402

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
         "moon": "MOON", "fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi", "feddg": "FedDG",
         "omnifm": "**OmniFM**"}  # fmt: skip

logger = logging.getLogger("omnifm_benchmark")


class Results:
    """The results CSV indexed by cell: test metrics per site, validation curves, cost per round."""

    def __init__(self, path: Path, metrics: Mapping[str, str]) -> None:
        self.metrics = metrics  # task -> main metric
        self.test: dict[tuple, dict[str, float]] = defaultdict(dict)  # cell key -> site -> value
        self.curve: dict[tuple, dict[int, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )  # -> round -> sites
        self.cost: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.commits: set[str] = set()
        with open(path) as f:
            for r in csv.DictReader(f):
                key, value = (
                    (r["task"], r["scenario"], r["strategy"], r["init"], int(r["seed"])),
                    float(r["value"]),
                )
                self.commits.add(r["commit"])
                if r["split"] == "round" and r["metric"] in ("seconds", "upload_bytes"):
                    self.cost[key][r["metric"]].append(value)
                elif r["metric"] == metrics.get(r["task"]):
                    if r["split"] == "test":
                        self.test[key][r["site"]] = value
                    elif r["split"] == "validation":
                        self.curve[key][int(r["round"])].append(value)

    def seeds(self, task: str, scenario: str, strategy: str, init: str = "scratch") -> list[tuple]:
        return sorted(k for k in self.test if k[:4] == (task, scenario, strategy, init))

    def site_mean(self, task, scenario, strategy, init="scratch") -> list[float]:
        """One value per seed: the metric averaged over the sites."""
        return [statistics.fmean(self.test[k].values()) for k in self.seeds(task, scenario, strategy, init)]

    def per_site(self, task, scenario, strategy, init="scratch") -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for k in self.seeds(task, scenario, strategy, init):
            for site, value in self.test[k].items():
                out[site].append(value)
        return out

    def cost_per_round(self, task, scenario, strategy, init="scratch") -> tuple[float, float]:
        """Wall seconds per round and MB all sites upload per round, averaged over rounds and seeds."""
        cost = [self.cost[k] for k in self.seeds(task, scenario, strategy, init)]
        if not cost:
            return float("nan"), float("nan")
        seconds = statistics.fmean(v for c in cost for v in c["seconds"])
        return seconds, statistics.fmean(
            sum(c["upload_bytes"]) / max(len(c["seconds"]), 1) for c in cost
        ) / 1e6

    def strategies(self, task: str, scenario: str, init: str = "scratch") -> list[str]:
        return list(
            dict.fromkeys(
                k[2]
                for k in sorted(self.test, key=lambda k: k[2])
                if k[:2] == (task, scenario) and k[3] == init
            )
        )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: Sequence[float], digits: int, bold: bool = False) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    text = f"{m:.{digits}f} ± {s:.{digits}f}"
    return f"**{text}**" if bold else text


def name(strategy: str) -> str:
    return NAMES.get(strategy, strategy)


def digits(metric: str) -> int:
    return 2 if metric == "psnr" else 3


# -------------------------------------------------------------------------------------------------- tables
def scenario_table(res: Results, task: str, scenario: str, order: Sequence[str]) -> list[str]:
    """Strategies x (sites, average, s/round, MB/round); the best mean of each column in bold."""
    metric = res.metrics[task]
    strategies = [s for s in order if res.seeds(task, scenario, s)]
    per_site = {s: res.per_site(task, scenario, s) for s in strategies}
    sites = list(dict.fromkeys(site for s in strategies for site in per_site[s]))
    columns = {site: {s: per_site[s].get(site, []) for s in strategies} for site in sites}
    columns["average"] = {s: res.site_mean(task, scenario, s) for s in strategies}
    best = {
        c: max((s for s in strategies if v[s]), key=lambda s: statistics.fmean(v[s]), default=None)
        for c, v in columns.items()
    }
    lines = [
        f"| strategy | {' | '.join(sites)} | average | s/round | MB/round |",
        "|---" * (len(sites) + 4) + "|",
    ]
    for s in strategies:
        cells = [fmt(columns[c][s], digits(metric), best[c] == s) for c in columns]
        seconds, mb = res.cost_per_round(task, scenario, s)
        lines.append(f"| {name(s)} | {' | '.join(cells)} | {seconds:.1f} | {mb:.2f} |")
    return lines


def margin(res: Results, task: str, scenario: str, init: str = "scratch") -> dict[str, Any] | None:
    """OmniFM's mean minus the best baseline's (Local and federated strategies; not Centralized)."""
    omni = res.site_mean(task, scenario, "omnifm", init)
    baselines = {s: res.site_mean(task, scenario, s, init) for s in res.strategies(task, scenario, init)
                 if s not in BASELINE_EXCLUDED and not s.startswith("omnifm")}  # fmt: skip
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


def summary_table(res: Results, tasks: Sequence[str], scenarios: Sequence[str]) -> list[str]:
    lines = ["| task | scenario | OmniFM | best baseline | margin | beats it by > std | FedAvg | above FedAvg | Centralized | OmniFM / Centralized (>= 0.95) |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    yes_no = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    for task in tasks:
        d = digits(res.metrics[task])
        for scenario in scenarios:
            m = margin(res, task, scenario)
            if m is None:
                continue
            (om, os_), (bm, bs) = m["omnifm"], m["best_value"]
            wins = m["margin"] > max(os_, bs)
            fed = m["fedavg"]
            cen = m["centralized"]
            lines.append(
                f"| {task} | {scenario} | {om:.{d}f} ± {os_:.{d}f} | {name(m['best'])} {bm:.{d}f} ± {bs:.{d}f} | "
                f"{m['margin']:+.{d}f} | {yes_no(wins)} | "
                f"{f'{fed[0]:.{d}f}' if fed else '–'} | {yes_no(om > fed[0]) if fed else '–'} | "
                f"{f'{cen[0]:.{d}f}' if cen else '–'} | "
                f"{f'{om / cen[0]:.3f} ({yes_no(om >= 0.95 * cen[0])})' if cen and cen[0] else '–'} |"
            )
    return lines


def compact_table(res: Results, task: str, scenarios: Sequence[str], order: Sequence[str]) -> list[str]:
    """Strategies x scenarios (site average), best in bold, with the first scenario's cost per round."""
    metric, d = res.metrics[task], digits(res.metrics[task])
    strategies = [s for s in order if any(res.seeds(task, sc, s) for sc in scenarios)]
    means = {(s, sc): res.site_mean(task, sc, s) for s in strategies for sc in scenarios}
    best = {
        sc: max((s for s in strategies if means[(s, sc)]), key=lambda s: statistics.fmean(means[(s, sc)]))
        for sc in scenarios
    }
    lines = [
        f"| {task} ({metric}) | {' | '.join(scenarios)} | s/round | MB/round |",
        "|---" * (len(scenarios) + 3) + "|",
    ]
    for s in strategies:
        seconds, mb = res.cost_per_round(task, scenarios[0], s)
        cells = [fmt(means[(s, sc)], d, best[sc] == s) for sc in scenarios]
        lines.append(f"| {name(s)} | {' | '.join(cells)} | {seconds:.1f} | {mb:.2f} |")
    return lines


def update_readme(readme: Path, block: Sequence[str]) -> None:
    """Replace the text between the benchmark markers of ``readme`` with ``block``."""
    start, end = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} markers to put the benchmark tables between.")
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + "\n".join(block) + "\n" + end + rest.split(end, 1)[1])


def finetune_table(res: Results, task: str, scenario: str) -> list[str]:
    strategies = res.strategies(task, scenario, "pretrained")
    if not strategies:
        return []
    d = digits(res.metrics[task])
    lines = ["| strategy | from scratch | fine-tuned | change |", "|---|---|---|---|"]
    for s in strategies:
        a, b = res.site_mean(task, scenario, s), res.site_mean(task, scenario, s, "pretrained")
        change = f"{statistics.fmean(b) - statistics.fmean(a):+.{d}f}" if a and b else "–"
        lines.append(f"| {name(s)} | {fmt(a, d)} | {fmt(b, d)} | {change} |")
    return lines


def ablation_table(res: Results, tasks: Sequence[str], scenario: str, variants: Sequence[str]) -> list[str]:
    rows = ["omnifm", *variants]
    present = [t for t in tasks if any(res.seeds(t, scenario, v) for v in variants)]
    if not present:
        return []
    lines = [f"| variant | {' | '.join(present)} |", "|---" * (len(present) + 1) + "|"]
    for v in rows:
        cells = []
        for t in present:
            values, full = res.site_mean(t, scenario, v), res.site_mean(t, scenario, "omnifm")
            delta = (
                f" ({statistics.fmean(values) - statistics.fmean(full):+.{digits(res.metrics[t])}f})"
                if values and full and v != "omnifm"
                else ""
            )
            cells.append(fmt(values, digits(res.metrics[t])) + delta)
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
    ax.legend(fontsize=7, ncol=max(len(strategies), 1), loc="upper center", bbox_to_anchor=(0.5, -0.1))
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
    metrics = {t: spec["metric"] for t, spec in suite["tasks"].items()}
    res = Results(results, metrics)
    tasks = [t for t in suite["tasks"] if any(k[0] == t and k[1] in suite["scenarios"] for k in res.test)]
    scenarios = [s for s in suite["scenarios"] if any(k[1] == s for k in res.test)]
    variants = list(suite.get("variants") or {})
    order = [s for exp in suite["experiments"] for s in exp["strategies"] if s not in variants]
    order = list(dict.fromkeys(order))
    plots.mkdir(parents=True, exist_ok=True)
    rel = lambda p: Path(os.path.relpath(p, output.parent)).as_posix()  # noqa: E731  # links from the report
    pre = suite.get("pretraining") or {}
    command = (
        f"Made by `python benchmarks/run.py --suite {suite['name']} --workers 2` then "
        f"`python benchmarks/report.py --suite {suite['name']}`."
    )
    out = [
        f"# Benchmark: suite `{suite['name']}`", "", command, "",
        f"Results: `{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}`, commit(s) {', '.join(sorted(res.commits))}. "
        f"Test split of every site after the last round; per cell the main metric is averaged over sites, then "
        f"mean ± std over seeds {suite['seeds']}. Budget: {suite['rounds']} rounds x {suite['local_epochs']} local epochs "
        f"(task overrides in `benchmarks/suites/{suite['name']}.yaml`). Best mean per column in bold. "
        f"Margin = OmniFM minus the best of Local and the federated baselines. Fine-tuning starts from the same task "
        f"trained centrally ({pre.get('strategy', 'centralized')}) on {', '.join(pre.get('sites', []))}.", "",
        "## Summary against the targets", "", *summary_table(res, tasks, scenarios), "",
    ]  # fmt: skip
    for task in tasks:
        out += [f"## {task} (test {metrics[task]})", ""]
        for scenario in scenarios:
            out += [f"### {scenario}", "", *scenario_table(res, task, scenario, order), ""]
            m = margin(res, task, scenario)
            if m is not None:
                out += [
                    f"OmniFM minus the best baseline ({name(m['best']).strip('*')}): {m['margin']:+.{digits(metrics[task])}f}.",
                    "",
                ]
        curves = plot_curves(res, task, scenarios, plots / f"{task}_curves.png")
        bars = plot_sites(res, task, scenarios[0], plots / f"{task}_sites.png")
        out += [f"![{task} curves]({rel(curves)})", "", f"![{task} per site]({rel(bars)})", ""]
        tune = finetune_table(res, task, scenarios[0])
        if tune:
            out += [f"Fine-tuning ({scenarios[0]}):", "", *tune, ""]
        if workdir is not None:
            figure = qualitative(suite, task, workdir, plots / f"{task}_qualitative.png")
            if figure is not None:
                out += [f"![{task} qualitative]({rel(figure)})", ""]
    ablation = ablation_table(res, tasks, scenarios[0], variants)
    if ablation:
        out += [f"## Ablation ({scenarios[0]}; in brackets: change from full OmniFM)", "", *ablation, ""]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(out))
    if readme is not None:  # the summary and one compact table per task, linking the full report and plots
        link = lambda p: Path(os.path.relpath(p, readme.parent)).as_posix()  # noqa: E731
        block = [command, "", f"Commit(s) {', '.join(sorted(res.commits))}; full tables, per-site results, fine-tuning and "
                 f"ablation: [{link(output)}]({link(output)}).", "", *summary_table(res, tasks, scenarios), ""]  # fmt: skip
        for task in tasks:
            block += [*compact_table(res, task, scenarios, order), ""]
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
