"""Federated round overhead and upload size, in-process simulator and NVFlare SimEnv, side by side.

    python benchmarks/fl_overhead.py [--sites 2 4 8] [--rounds 3] [--image_size 64] [--skip_nvflare]

For 2, 4 and 8 sites of the segmentation bundle (sites beyond the five MR reference sites reuse their
data under new names), the same FedAvg job runs in the in-process simulator and in NVFlare's SimEnv.

* simulator overhead = round wall time - the trainers' and evaluators' own run times (ignite's
  ``state.times``), as a share of the round: what the engine adds (loading and packaging weights, the
  strategy's client work outside the trainer, aggregation, metrics, the checkpoint);
* NVFlare overhead = NVFlare's round wall time - the slowest site's own evaluation + training time in that
  round (its evaluator's and trainer's run times in its NVFlare log; the sites run in parallel processes, so
  the round can be no shorter), for the rounds after the first (the first also starts the sites: its overhead
  is printed as ``start-up``), with NVFlare's default polling (a site asks for its next task 2 s after the
  last, the controller checks every 0.5 s) and with the job's (``federated/job.py``'s ``--poll_interval``);
* upload = bytes one site sends per round (weights + strategy extras, serialised), OmniFM vs FedAvg on
  the same bundle: FedAvg runs the plain backbone (every OmniFM part off), as the baselines do.

The last lines read ``simulator overhead: P%`` (the largest over the site counts),
``nvflare round overhead: S s`` (the largest over the site counts, the job's polling) and
``omnifm/fedavg upload ratio: R``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import re
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
    if not available:
        sys.exit(
            f"fl_overhead: no MR reference site with segmentation.json under {reference}; build them with "
            f"`python -m omnifm_monai.data build_reference_sites --output_dir {reference}`."
        )
    return {f"site{i + 1}": str(reference / available[i % len(available)]) for i in range(n)}


def site_seconds(result_dir: Path, sites: list[str]) -> list[float]:
    """Per round, the slowest site's own compute: the run times its evaluators and trainer log (ignite's
    ``Engine run finished. Time taken: HH:MM:SS.mmm``), a round closing with the trainer's."""
    import job as nvflare_job

    logs, per_site = nvflare_job._logs(result_dir, sites), []
    for log in [logs[s] for s in sites if s in logs]:
        rounds, current = [], 0.0
        for line in log.read_text().splitlines():
            hit = re.search(r" - (\w+) - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)", line)
            if hit:
                current += 3600 * int(hit.group(2)) + 60 * int(hit.group(3)) + float(hit.group(4))
                if hit.group(1) == "SupervisedTrainer":
                    rounds.append(current)
                    current = 0.0
        per_site.append(rounds)
    return [max(r) for r in zip(*per_site, strict=False)]


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
    parser.add_argument(
        "--skip_default_polling", action="store_true", help="run NVFlare with the job's polling interval only"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from omnifm_monai.fl import simulate

    sys.path.insert(0, str(ROOT / "federated"))
    reference = Path(args.reference_dir)
    sites = {n: site_dirs(reference, n) for n in {*args.sites, 2}}  # missing data fails before any output
    overrides = {"image_size": args.image_size, "batch_size": 8}
    work = Path(tempfile.mkdtemp(prefix="fl_overhead_"))
    print(
        f"segmentation bundle, {args.rounds} rounds, 1 local epoch, {args.image_size}x{args.image_size}, logs in {work / 'log.txt'}"
    )
    print("| sites | engine | round s (mean) | train+eval s | overhead s | overhead % |")
    print("|---|---|---|---|---|---|")
    worst, nvflare_worst, upload = 0.0, float("-inf"), {}
    for n in args.sites:
        dirs = sites[n]
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

        polls = [("job's polling", nvflare_job.POLL_INTERVAL)]
        if not args.skip_default_polling:
            polls.insert(0, ("NVFlare's default polling", None))
        for label, poll in polls:
            recipe = nvflare_job.build_recipe(
                str(BUNDLE),
                "fedavg",
                list(dirs),
                rounds=args.rounds,
                site_dirs=dirs,
                overrides=overrides,
                staging=str(work / f"staging_{n}_{poll}"),
                poll_interval=poll,
            )
            with quiet(work / "log.txt"):
                result = nvflare_job.run(
                    recipe, list(dirs), env="sim", workspace=str(work / f"nvflare_{n}_{poll}")
                )
            nvflare_job.check_result(result, "fedavg", args.rounds)
            rounds, compute = nvflare_job.round_seconds(result), site_seconds(result, list(dirs))
            extra = [r - c for r, c in zip(rounds, compute, strict=True)]
            steady, compute = extra[1:] or extra, compute[1:] or compute  # round 1 also starts the sites
            if poll is not None:
                nvflare_worst = max(nvflare_worst, statistics.mean(steady))
            print(
                f"| {n} | NVFlare SimEnv, {label} | {statistics.mean(rounds[1:] or rounds):.2f} | "
                f"{statistics.mean(compute):.2f} (slowest site) | "
                f"{statistics.mean(steady):.3f} (start-up {extra[0]:.1f}) | "
                f"{100 * sum(steady) / sum(rounds[1:] or rounds):.2f} |",
                flush=True,
            )
    out = work / "sim_omnifm_2"
    with quiet(work / "log.txt"):
        simulate(
            str(BUNDLE),
            "omnifm",
            rounds=args.rounds,
            output=str(out),
            sites=sites[2],
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
    if not args.skip_nvflare:
        print(f"nvflare round overhead: {nvflare_worst:.2f} s")
    print(f"omnifm/fedavg upload ratio: {upload['omnifm'] / upload['fedavg']:.3f}")


if __name__ == "__main__":
    main()
