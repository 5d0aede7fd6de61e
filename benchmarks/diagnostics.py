"""OmniFM's diagnostics per round: the ``diagnostics`` rows of a results CSV (written by ``benchmarks/run.py``).

One row per cell, round and site (a site name or ``server``), metric one of :data:`DIAGNOSTICS`: the output gate,
the spread of the tokens, the share of a site's own modality in what it retrieves and the knowledge bank's size.
``benchmarks/report.py`` lists the last round's values per task and plots them per round: mean over the sites,
then over the seeds.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

DIAGNOSTICS = ("gate", "token_spread", "own_modality_share", "bank_size")

# cell key (task, scenario, strategy, init, seed) -> metric -> round -> one value per site
Diagnostics = Mapping[tuple, Mapping[str, Mapping[int, Sequence[float]]]]


def series(diag: Diagnostics, task: str, scenario: str, init: str = "scratch") -> dict[str, dict]:
    """strategy -> metric -> round -> one site mean per seed, for the cells of ``task`` and ``scenario``."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for key, metrics in diag.items():
        if key[:2] == (task, scenario) and key[3] == init:
            for metric, rounds in metrics.items():
                for r, values in rounds.items():
                    out[key[2]][metric][r].append(statistics.fmean(values))
    return out


def ordered(metrics: Iterable[str]) -> list[str]:
    metrics = set(metrics)
    return [m for m in DIAGNOSTICS if m in metrics] + sorted(metrics - set(DIAGNOSTICS))


def last_round_table(
    diag: Diagnostics, task: str, scenarios: Sequence[str], label: Callable[[str], str] = str
) -> list[str]:
    """(scenario, strategy) x diagnostic: the last round's value, mean ± std over seeds; [] without diagnostics."""
    rows = [(sc, s, m) for sc in scenarios for s, m in series(diag, task, sc).items()]
    if not rows:
        return []
    metrics = ordered(m for *_, ms in rows for m in ms)
    lines = [f"| scenario | strategy | {' | '.join(metrics)} |", "|---" * (len(metrics) + 2) + "|"]
    for scenario, strategy, ms in rows:
        cells = []
        for m in metrics:
            values = ms[m][max(ms[m])] if m in ms else []
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3g} ± {std:.2g}" if values else "–")
        lines.append(f"| {scenario} | {label(strategy)} | {' | '.join(cells)} |")
    return lines


def plot(
    diag: Diagnostics, task: str, scenarios: Sequence[str], path: Path, label: Callable[[str], str] = str
) -> Path | None:
    """One panel per diagnostic, one line per strategy, for the first of ``scenarios`` that has diagnostics."""
    scenario = next((sc for sc in scenarios if series(diag, task, sc)), None)
    if scenario is None:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    data = series(diag, task, scenario)
    metrics = ordered(m for ms in data.values() for m in ms)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for strategy in sorted(data, key=lambda s: (s != "omnifm", s)):
            rounds = sorted(data[strategy].get(metric, {}))
            if rounds:
                means = [statistics.fmean(data[strategy][metric][r]) for r in rounds]
                ax.plot([r + 1 for r in rounds], means, marker="o", ms=3, label=label(strategy),
                        lw=2.4 if strategy == "omnifm" else 1.2, color="black" if strategy == "omnifm" else None)  # fmt: skip
        ax.set(title=f"{task}: {metric} ({scenario})", xlabel="round", ylabel=f"{metric} (site mean)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
