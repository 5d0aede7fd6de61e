"""Update compression's quality effect and upload size: the same simulated jobs with ``none``, ``fp16`` and ``int8``.

    python benchmarks/compression.py [--strategies fedavg omnifm] [--sites 2] [--rounds 3] [--seeds 0]

For each strategy and seed the segmentation bundle runs in the in-process simulator once per codec (the same
sites, seeds and data; only what the sites upload differs) and is tested on every site's test split. The table
gives the sites' mean test key metric and the bytes one site uploads per round (``upload_bytes``, the encoded
payload). The last lines read ``fp16 upload ratio: R`` and ``int8 upload ratio: R`` (bytes against ``none``,
mean over the runs) and ``int8 metric change: D`` (int8's test metric minus none's, mean over the runs).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from fl_overhead import BUNDLE, quiet, site_dirs  # noqa: E402

CODECS = ("none", "fp16", "int8")


def upload_per_round(out: Path) -> float:
    with open(out / "metrics.csv") as f:
        return statistics.mean(float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "upload_bytes")


def mean_metric(results: dict, key: str) -> float:
    values = [m[key] for m in results.values() if key in m and math.isfinite(m[key])]
    return statistics.mean(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "omnifm"])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--reference_dir", default=str(ROOT.parent / "outputs" / "reference_sites"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from omnifm_monai.fl import simulate
    from omnifm_monai.fl.bundle import key_metric

    key = key_metric(BUNDLE)
    dirs = site_dirs(Path(args.reference_dir), args.sites)
    work = Path(tempfile.mkdtemp(prefix="compression_"))
    print(
        f"segmentation bundle, {args.sites} sites, {args.rounds} rounds, {args.image_size}x{args.image_size}, "
        f"seeds {args.seeds}, logs in {work / 'log.txt'}"
    )
    print(
        f"| strategy | seed | codec | test {key.removeprefix('val_')} | upload per site per round (bytes) | vs none |"
    )
    print("|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {"fp16": [], "int8": []}
    changes: list[float] = []
    for strategy in args.strategies:
        for seed in args.seeds:
            base: dict[str, float] = {}
            for codec in CODECS:
                out = work / f"{strategy}_{seed}_{codec}"
                with quiet(work / "log.txt"):
                    results = simulate(
                        str(BUNDLE),
                        strategy,
                        rounds=args.rounds,
                        output=str(out),
                        sites=dirs,
                        seed=seed,
                        overrides={"image_size": args.image_size, "batch_size": 8},
                        figures=False,
                        compression=codec,
                    )
                metric, upload = mean_metric(results, key), upload_per_round(out)
                if codec == "none":
                    base = {"metric": metric, "upload": upload}
                else:
                    ratios[codec].append(upload / base["upload"])
                if codec == "int8":
                    changes.append(metric - base["metric"])
                print(
                    f"| {strategy} | {seed} | {codec} | {metric:.4f} | {upload:,.0f} | {upload / base['upload']:.3f} |",
                    flush=True,
                )
    print(f"fp16 upload ratio: {statistics.mean(ratios['fp16']):.3f}")
    print(f"int8 upload ratio: {statistics.mean(ratios['int8']):.3f}")
    print(f"int8 metric change: {statistics.mean(changes):+.4f}")


if __name__ == "__main__":
    main()
