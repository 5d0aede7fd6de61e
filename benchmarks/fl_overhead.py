"""Federated round overhead and upload size, in-process simulator and NVFlare SimEnv, side by side.

    python benchmarks/fl_overhead.py [--sites 2 4 8] [--rounds 3] [--image_size 64] [--skip_nvflare]

For 2, 4 and 8 sites of the segmentation bundle (sites beyond the five MR reference sites reuse their
data under new names), the same FedAvg job runs in the in-process simulator and in NVFlare's SimEnv.

* simulator overhead = round wall time - the trainers' and evaluators' own run times (ignite's
  ``state.times``), as a share of the round: what the engine adds (loading and packaging weights, the
  strategy's client work outside the trainer, aggregation, metrics, the checkpoint);
* NVFlare overhead = NVFlare's round wall time - the simulator's training + evaluation time for the same
  round (the same seeds, data and compute; NVFlare runs sites in parallel threads, so this is a lower bound
  on what its machinery adds);
* upload = bytes one site sends per round (weights + strategy extras, serialised), OmniFM vs FedAvg on
  the same bundle: FedAvg runs the plain backbone (every OmniFM part off), as the baselines do.

The last two lines read ``simulator overhead: P%`` (the largest over the site counts) and
``omnifm/fedavg upload ratio: R``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "omnifm_segmentation"
MR_SITES = ["icbm_t1", "colin_t1", "icbm_t2w", "icbm_pdw", "icbm_flair"]


def site_dirs(reference: Path, n: int) -> dict[str, str]:
    available = [s for s in MR_SITES if (reference / s / "segmentation.json").exists()]
    return {f"site{i + 1}": str(reference / available[i % len(available)]) for i in range(n)}


def read_rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def simulator_costs(out: Path) -> dict[str, list[float]]:
    by_round: dict[int, dict[str, float]] = defaultdict(dict)
    uploads: dict[int, list[float]] = defaultdict(list)
    for r in read_rows(out):
        if r["site"] == "server":
            by_round[int(r["round"])][r["metric"]] = float(r["value"])
        elif r["metric"] == "upload_bytes":
            uploads[int(r["round"])].append(float(r["value"]))
    rounds = sorted(by_round)
    return {
        "seconds": [by_round[k]["seconds"] for k in rounds],
        "compute": [by_round[k]["train_seconds"] + by_round[k]["eval_seconds"] for k in rounds],
        "upload": [statistics.mean(uploads[k]) for k in rounds],
    }


@contextlib.contextmanager
def quiet(log: Path):
    """Send this process's (and its children's) stdout / stderr to ``log``: only the tables reach the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--reference_dir", default=str(ROOT / "outputs" / "reference_sites"))
    parser.add_argument("--skip_nvflare", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from omnifm_monai.fl import simulate

    sys.path.insert(0, str(ROOT / "federated"))
    reference = Path(args.reference_dir)
    overrides = {"image_size": args.image_size, "batch_size": 8}
    work = Path(tempfile.mkdtemp(prefix="fl_overhead_"))
    print(
        f"segmentation bundle, {args.rounds} rounds, 1 local epoch, {args.image_size}x{args.image_size}, logs in {work / 'log.txt'}"
    )
    print("| sites | engine | round s (mean) | train+eval s | overhead s | overhead % |")
    print("|---|---|---|---|---|---|")
    worst, upload = 0.0, {}
    for n in args.sites:
        dirs = site_dirs(reference, n)
        out = work / f"sim_fedavg_{n}"
        with quiet(work / "log.txt"):
            simulate(
                str(BUNDLE),
                "fedavg",
                rounds=args.rounds,
                output=str(out),
                sites=dirs,
                overrides=overrides,
                test=False,
            )
        sim = simulator_costs(out)
        overhead = [s - c for s, c in zip(sim["seconds"], sim["compute"], strict=True)]
        share = 100 * sum(overhead) / sum(sim["seconds"])
        worst = max(worst, share)
        upload.setdefault("fedavg", sim["upload"][-1])
        print(
            f"| {n} | simulator | {statistics.mean(sim['seconds']):.2f} | {statistics.mean(sim['compute']):.2f} | "
            f"{statistics.mean(overhead):.3f} | {share:.2f} |",
            flush=True,
        )
        if args.skip_nvflare:
            continue
        import job as nvflare_job

        recipe = nvflare_job.build_recipe(
            str(BUNDLE),
            "fedavg",
            list(dirs),
            rounds=args.rounds,
            site_dirs=dirs,
            overrides=overrides,
            staging=str(work / f"staging_{n}"),
        )
        with quiet(work / "log.txt"):
            result = nvflare_job.run(recipe, list(dirs), env="sim", workspace=str(work / f"nvflare_{n}"))
        nvflare_job.check_result(result, "fedavg", args.rounds)
        rounds = nvflare_job.round_seconds(result)
        extra = [r - c for r, c in zip(rounds, sim["compute"], strict=False)]
        print(
            f"| {n} | NVFlare SimEnv | {statistics.mean(rounds):.2f} | {statistics.mean(sim['compute']):.2f} (simulator) | "
            f"{statistics.mean(extra):.3f} | {100 * sum(extra) / sum(rounds):.2f} |",
            flush=True,
        )
    out = work / "sim_omnifm_2"
    with quiet(work / "log.txt"):
        simulate(
            str(BUNDLE),
            "omnifm",
            rounds=args.rounds,
            output=str(out),
            sites=site_dirs(reference, 2),
            overrides=overrides,
            test=False,
        )
    upload["omnifm"] = simulator_costs(out)["upload"][-1]
    print()
    print("| strategy | upload per site per round (bytes) |")
    print("|---|---|")
    for name, value in upload.items():
        print(f"| {name} | {value:,.0f} |")
    print(f"simulator overhead: {worst:.2f}%")
    print(f"omnifm/fedavg upload ratio: {upload['omnifm'] / upload['fedavg']:.3f}")


if __name__ == "__main__":
    main()
