"""Training-step cost of OmniFM against its plain backbone, per task network, side by side in one run.

    python benchmarks/overhead.py [--size 128] [--batch 8] [--steps 10]

For each task network at ``1 x size x size`` with batch ``batch``: the median wall time of one training
step (forward, loss, backward, Adam step) on the CPU, the two models interleaved step by step so both see
the same machine state, and the peak resident memory of a fresh process running those steps (above the
process's footprint after importing torch: model, optimizer state, activations). The
backbone is the very same MONAI network OmniFM wraps (every OmniFM part off). OmniFM runs with its bank
filled to capacity and the gate open, as in a federated round. The last line reads
``worst step-time ratio: R``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch

from omnifm_monai.losses import OmniFMLoss
from omnifm_monai.networks import OmniFMResNet, OmniFMUNet, OmniFMVQA
from omnifm_monai.networks.blocks import kmeans_centroids

OFF = dict(use_gskr=False, use_ecaf=False, use_prefix=False, use_suffix=False, use_spa=False)
TASKS = ("classification", "segmentation", "super_resolution", "vqa")


def build(task: str, omnifm: bool, size: int, batch: int):
    """(network, inputs, target, task loss) for one task; the same seed gives the same backbone."""
    torch.manual_seed(0)
    flags = {"gate_init": 0.5} if omnifm else OFF
    x = torch.rand(batch, 1, size, size)
    if task == "classification":
        return (
            OmniFMResNet(2, 1, 4, **flags),
            (x,),
            torch.randint(0, 4, (batch,)),
            torch.nn.CrossEntropyLoss(),
        )
    if task == "segmentation":
        return (
            OmniFMUNet(2, 1, 3, **flags),
            (x,),
            torch.randint(0, 3, (batch, size, size)),
            torch.nn.CrossEntropyLoss(),
        )
    if task == "super_resolution":
        return (
            OmniFMUNet(2, 1, 1, norm=None, residual=True, **flags),
            (x,),
            x.clone(),
            torch.nn.L1Loss(),
        )  # as the bundle
    question = torch.randint(1, 200, (batch, 12))
    return (
        OmniFMVQA(2, 1, 200, 30, **flags),
        (x, question),
        torch.randint(0, 30, (batch,)),
        torch.nn.CrossEntropyLoss(),
    )


class Stepper:
    def __init__(self, task: str, omnifm: bool, size: int, batch: int) -> None:
        self.net, self.inputs, self.target, task_loss = build(task, omnifm, size, batch)
        self.net.train()
        if omnifm:  # a full bank: retrieval cost at its worst
            tokens = self.net.spectral_tokens(torch.rand(256, 1, size, size)).squeeze(1)
            n = self.net.bank.capacity // 8
            self.net.bank.merge(
                [
                    {"keys": kmeans_centroids(tokens[i::8], n, seed=i), "site": i, "modality": 0}
                    for i in range(8)
                ]
            )
        self.loss = OmniFMLoss(task_loss, self.net, spa_weight=0.1)
        self.opt = torch.optim.Adam(self.net.parameters(), 1e-4)

    def step(self) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.net(*self.inputs), self.target).backward()
        self.opt.step()
        return time.perf_counter() - start


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB -> MiB


def _peak_rss(task: str, omnifm: bool, size: int, batch: int, steps: int, queue) -> None:
    baseline = _status_mib("VmRSS")  # torch imported, nothing built
    stepper = Stepper(task, omnifm, size, batch)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) so bank filling and set-up do not count
    for _ in range(steps):
        stepper.step()
    queue.put(_status_mib("VmHWM") - baseline)


def peak_rss_mib(task: str, omnifm: bool, size: int, batch: int, steps: int) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss, args=(task, omnifm, size, batch, steps, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x{args.size}x{args.size}, batch {args.batch}"
    )
    header = "| task | backbone ms/step | OmniFM ms/step | time ratio | backbone peak MiB | OmniFM peak MiB | memory ratio |"
    print(header)
    print("|" + "---|" * 7)
    worst = 0.0
    for task in TASKS:
        plain, omni = Stepper(task, False, args.size, args.batch), Stepper(task, True, args.size, args.batch)
        times = {False: [], True: []}
        for i in range(args.warmup + args.steps):
            for key, stepper in ((False, plain), (True, omni)):
                t = stepper.step()
                if i >= args.warmup:
                    times[key].append(t)
        t_plain, t_omni = statistics.median(times[False]), statistics.median(times[True])
        m_plain = peak_rss_mib(task, False, args.size, args.batch, 2)
        m_omni = peak_rss_mib(task, True, args.size, args.batch, 2)
        ratio = t_omni / t_plain
        worst = max(worst, ratio)
        print(
            f"| {task} | {1e3 * t_plain:.1f} | {1e3 * t_omni:.1f} | {ratio:.3f} | {m_plain:.0f} | {m_omni:.0f} | {m_omni / m_plain:.3f} |",
            flush=True,
        )
    print(f"worst step-time ratio: {worst:.3f}")


if __name__ == "__main__":
    main()
