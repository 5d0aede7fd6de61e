"""The in-process simulator against a bare PyTorch training loop, and its memory per site.

    python benchmarks/simulator_speed.py [--sites 3] [--rounds 4] [--image_size 32] [--strategy fedavg]
                                         [--threads 1] [--memory_sites 2 8 32] [--skip_memory]

**Speed.** The segmentation bundle's job (``--sites`` sites, 1 local epoch, batch 8) runs in the simulator, and
before each of its rounds the same round runs as a bare loop: the two alternate round by round in one process.
What is compared is the time the same training steps take:

* the bare loop is what the bundle trains, without the federation, MONAI's engines or ignite: the same network
  (built by the bundle with the strategy's overrides, one network for every site, as in the simulator), the
  bundle's own training ``DataLoader`` for each site (its cached deterministic transforms and its random
  augmentation: batches like the trainer's, at the same cost), the bundle's loss and optimizer; each step is
  ``zero_grad``, forward, loss, backward, ``step``;
* the simulator's time is its whole training round (every site's: loading the global weights and its private
  state, the trainer's epoch with its handlers, packaging the update; then the server's aggregation). The
  validation after aggregation (work the bare loop does not do) and the checkpoint are shown beside it.

Times are the process's CPU time with ``--threads`` torch threads (1 by default): on a shared machine the wall
time of the same round varies several times with other loads, the work done does not; wall times are shown too.
The first round is a warm-up and left out of ``simulator vs bare loop: X`` (bare time / simulator time for the
same steps; 1.0 when the simulator adds nothing).

**Memory.** For each count in ``--memory_sites``, a fresh process runs one round of that many sites (sites beyond
the five MR reference sites reuse their data under new names) and reports its peak resident set (``VmHWM``).
``memory per added site`` is the slope between the smallest and the largest count.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fl_overhead import site_dirs  # sites beyond the five MR ones reuse their data under new names

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "omnifm_segmentation"


def round_costs(out: Path) -> dict[int, dict[str, float]]:
    """The server's cost rows per round of a simulator run."""
    costs: dict[int, dict[str, float]] = {}
    with open(out / "metrics.csv") as f:
        for r in csv.DictReader(f):
            if r["site"] == "server":
                costs.setdefault(int(r["round"]), {})[r["metric"]] = float(r["value"])
    return costs


class BareLoop:
    """The bundle's training, one epoch per site and round, as a plain PyTorch loop over one shared network."""

    def __init__(self, strategy: str, dirs: dict[str, str], overrides: dict, seed: int = 0) -> None:
        import torch

        from omnifm_monai.fl.bundle import bundle_parser
        from omnifm_monai.fl.engine import make_strategy, site_network, strategy_overrides

        first = next(iter(dirs.values()))
        strategy_obj = make_strategy(BUNDLE, strategy, list(dirs), dataset_dir=first)[0]
        self.network = site_network(BUNDLE, strategy_obj, overrides, seed, dataset_dir=first)
        site_overrides = strategy_overrides(BUNDLE, strategy_obj, overrides)
        self.sites = []
        for folder in dirs.values():
            parser = bundle_parser(BUNDLE, {**site_overrides, "dataset_dir": folder, "network": self.network})
            self.sites.append(
                (
                    parser.get_parsed_content("train::dataloader"),
                    parser.get_parsed_content("loss"),
                    parser.get_parsed_content("optimizer"),
                )
            )
        self.device = torch.device("cpu")

    def round(self) -> tuple[float, float, int]:
        """One epoch on every site: (wall seconds, CPU seconds, steps)."""
        steps, start, cpu = 0, time.perf_counter(), time.process_time()
        self.network.train()
        for loader, loss_function, optimizer in self.sites:
            for batch in loader:
                image, label = batch["image"].to(self.device), batch["label"].to(self.device)
                optimizer.zero_grad()
                loss = loss_function(self.network(image), label)
                loss.backward()
                optimizer.step()
                steps += 1
        return time.perf_counter() - start, time.process_time() - cpu, steps


def speed(args: argparse.Namespace, work: Path) -> float:
    import torch

    from omnifm_monai.fl import simulator

    torch.set_num_threads(args.threads)
    dirs = site_dirs(Path(args.reference_dir), args.sites)
    overrides = {"image_size": args.image_size, "batch_size": 8}
    bare = BareLoop(args.strategy, dirs, overrides)
    rows, train_round = [], simulator._train_round

    def interleaved(*a, **kw):  # a bare round, then the simulator's own training round, each timed
        bare_wall, bare_cpu, steps = bare.round()
        wall, cpu = time.perf_counter(), time.process_time()
        result = train_round(*a, **kw)
        rows.append((steps, bare_wall, bare_cpu, time.perf_counter() - wall, time.process_time() - cpu))
        return result

    simulator._train_round = interleaved
    try:
        simulator.simulate(
            str(BUNDLE),
            args.strategy,
            rounds=args.rounds,
            output=str(work / "simulator"),
            sites=dirs,
            overrides=overrides,
            test=False,
            figures=False,
        )
    finally:
        simulator._train_round = train_round
    costs = round_costs(work / "simulator")
    print(
        f"{args.strategy}, {args.sites} sites, {args.image_size}x{args.image_size}, batch 8, 1 local epoch, "
        f"{args.threads} torch thread(s); bare loop and simulator interleaved round by round"
    )
    print(
        "| round | steps | bare CPU s | simulator CPU s | CPU ratio | bare wall s | simulator wall s "
        "| + validation s | + checkpoint s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rnd, (steps, bare_wall, bare_cpu, wall, cpu) in enumerate(rows):
        print(
            f"| {rnd + 1}{' (warm-up)' if rnd == 0 else ''} | {steps} | {bare_cpu:.2f} | {cpu:.2f} | "
            f"{bare_cpu / cpu:.3f} | {bare_wall:.2f} | {wall:.2f} | {costs[rnd]['eval_seconds']:.2f} | "
            f"{costs[rnd]['checkpoint_seconds']:.2f} |"
        )
    measured = rows[1:] or rows  # the first round of each warms up
    wall = sum(r[1] for r in measured) / sum(r[3] for r in measured)
    print(f"wall-clock ratio (a shared machine's load varies between rounds): {wall:.3f}")
    return sum(r[2] for r in measured) / sum(r[4] for r in measured)


def memory_child(n: int, reference: str, image_size: int, output: str) -> None:
    """One round of ``n`` sites in this (fresh) process; prints its peak resident set in MiB as JSON."""
    from omnifm_monai.fl import simulate

    simulate(
        str(BUNDLE),
        "fedavg",
        rounds=1,
        output=output,
        sites=site_dirs(Path(reference), n),
        overrides={"image_size": image_size, "batch_size": 8},
        test=False,
        figures=False,
    )
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    print(json.dumps({"peak_mib": int(status["VmHWM"].split()[0]) / 1024}))


def memory(args: argparse.Namespace, work: Path) -> tuple[float, dict[int, float]]:
    peaks = {}
    print()
    print("| sites | peak RSS MiB (1 round) |")
    print("|---|---|")
    for n in args.memory_sites:
        result = subprocess.run(
            [
                sys.executable,
                __file__,
                "--_memory_child",
                str(n),
                "--reference_dir",
                args.reference_dir,
                "--image_size",
                str(args.image_size),
                "--_output",
                str(work / f"memory_{n}"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[n] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
        print(f"| {n} | {peaks[n]:.0f} |", flush=True)
    low, high = min(peaks), max(peaks)
    return (peaks[high] - peaks[low]) / (high - low), peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory_sites", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--reference_dir", default=str(ROOT / "outputs" / "reference_sites"))
    parser.add_argument("--_memory_child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    if args._memory_child:
        memory_child(args._memory_child, args.reference_dir, args.image_size, args._output)
        return
    work = Path(tempfile.mkdtemp(prefix="simulator_speed_"))
    ratio = speed(args, work)
    if not args.skip_memory:
        per_site, peaks = memory(args, work)
    print(f"simulator vs bare loop: {ratio:.3f}")
    if not args.skip_memory:
        print(f"memory per added site: {per_site:.1f} MiB")
        print(f"peak RSS with {max(peaks)} sites: {peaks[max(peaks)] / 1024:.2f} GiB")


if __name__ == "__main__":
    main()
