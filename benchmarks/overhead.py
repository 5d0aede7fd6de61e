"""Training-step cost of OmniFM against its plain backbone, per shipped bundle, side by side in one run.

    python benchmarks/overhead.py [--size 128] [--batch 8] [--steps 10] [--overrides '{"network_def#fusion_level": 3}']

For each bundle's network and optimiser (its ``configs/train.json`` ``network_def`` and ``optimizer``, as
shipped, plus ``--overrides``) at its own ``image_size`` and ``batch_size`` (or ``--size`` / ``--batch`` for
every bundle): the median wall time of one training step (forward, loss, backward, optimiser step) on the CPU,
the two models interleaved step by step so both see the same machine state, and the peak resident memory of
a fresh process running those steps (above the process's footprint after importing torch: model, optimizer
state, activations). The backbone is the network the baselines train: the same bundle with every OmniFM part
off (the strategies' ``network_def::use_*`` overrides). OmniFM runs with its bank filled to capacity and the
gate open, as in a federated round. The line ``worst step-time ratio: R`` closes the table.

``--attention_blocks`` adds, per bundle, the time of OmniFM's fusion path alone (tokenizer to gate, forward and
backward) with its attention blocks as shipped (:mod:`omnifm_monai.networks.blocks.attention`) against the same
network with MONAI's blocks (the same weights and values), closed by ``worst lean/MONAI attention time ratio: R``.

``--paper_sizes`` adds a second table on the paper's backbone sizes (:data:`PAPER_SIZES`: a ResNet-18 at 64 x 64
in the classification bundle, a model-zoo-size UNet in the segmentation bundle), closed by
``worst paper-size step-time ratio: R``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch
from monai.networks.blocks import CrossAttentionBlock, TransformerBlock

from omnifm_monai.fl.bundle import bundle_parser
from omnifm_monai.losses import OmniFMLoss
from omnifm_monai.networks import OmniFM
from omnifm_monai.networks.blocks import CrossAttention, TransformerLayer, kmeans_centroids

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {
    "classification": "omnifm_classification",
    "segmentation": "omnifm_segmentation",
    "super_resolution": "omnifm_super_resolution",
    "vqa": "omnifm_vqa",
}
TASKS = tuple(BUNDLES)
# the paper's backbone sizes: (bundle task, overrides, input size)
PAPER_SIZES = {
    "ResNet-18, 64 x 64": (
        "classification",
        {"network_def#layers": [2, 2, 2, 2], "network_def#channels": [64, 128, 256, 512]},
        64,
    ),
    "UNet 32-256 (model-zoo size), 128 x 128": (
        "segmentation",
        {"network_def#features": [32, 32, 64, 128, 256, 32]},
        128,
    ),
}
# VQA's vocabulary and answers come from a datalist; any 200 words and 30 answers size the network
VOCABULARY, ANSWERS = [f"w{i}" for i in range(200)], [f"a{i}" for i in range(30)]


def shipped_shape(task: str) -> tuple[int, int]:
    """The bundle's training ``(image_size, batch_size)``."""
    parser = bundle_parser(ROOT / "bundles" / BUNDLES[task], {"datalist_meta": {}})
    return parser.get("image_size"), parser.get("batch_size")


def build(task: str, omnifm: bool, size: int, batch: int, overrides: dict | None = None):
    """(network, optimiser, inputs, target, task loss) for one task's shipped network and optimiser; the same
    seed gives the same backbone."""
    # no datalist is read: its metadata is empty and VQA gets a vocabulary of its own
    extra = {
        "datalist_meta": {},
        "device": "$torch.device('cpu')",
        **(overrides or {}),
        **({"vocabulary": VOCABULARY, "answers": ANSWERS} if task == "vqa" else {}),
    }
    if not omnifm:
        extra.update({f"network_def::{p}": False for p in OmniFM.PARTS})
    torch.manual_seed(0)
    parser = bundle_parser(ROOT / "bundles" / BUNDLES[task], extra)
    net = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")  # over the same network's parameters
    if omnifm:
        net.gate.alpha.data.fill_(0.5)  # an open gate: the fused path is computed and trained
    x = torch.rand(batch, 1, size, size)
    if task in ("classification", "segmentation"):
        with torch.no_grad():
            classes = net.eval()(x[:1]).shape[1]
        target = torch.randint(0, classes, (batch,) if task == "classification" else (batch, size, size))
        return net, optimizer, (x,), target, torch.nn.CrossEntropyLoss()
    if task == "super_resolution":
        return net, optimizer, (x,), x.clone(), torch.nn.L1Loss()
    question = torch.randint(1, len(VOCABULARY), (batch, 12))
    target = torch.randint(0, len(ANSWERS), (batch,))
    return net, optimizer, (x, question), target, torch.nn.CrossEntropyLoss()


class Stepper:
    def __init__(self, task: str, omnifm: bool, size: int, batch: int, overrides: dict | None = None) -> None:
        self.net, self.opt, self.inputs, self.target, task_loss = build(task, omnifm, size, batch, overrides)
        self.net.train()
        if omnifm:  # a full bank: retrieval cost at its worst
            tokens = self.net.spectral_keys(torch.rand(256, 1, size, size))
            n = self.net.bank.capacity // 8
            self.net.bank.merge(
                [
                    {"keys": kmeans_centroids(tokens[i::8], n, seed=i), "site": i, "modality": 0}
                    for i in range(8)
                ]
            )
        self.loss = OmniFMLoss(task_loss, self.net, spa_weight=0.1)

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


def _peak_rss(task: str, omnifm: bool, size: int, batch: int, steps: int, overrides, queue) -> None:
    baseline = _status_mib("VmRSS")  # torch imported, nothing built
    stepper = Stepper(task, omnifm, size, batch, overrides)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) so bank filling and set-up do not count
    for _ in range(steps):
        stepper.step()
    queue.put(_status_mib("VmHWM") - baseline)


def peak_rss_mib(task: str, omnifm: bool, size: int, batch: int, steps: int, overrides=None) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss, args=(task, omnifm, size, batch, steps, overrides, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def measure(task: str, size: int, batch: int, steps: int, warmup: int, overrides: dict) -> tuple[float, ...]:
    """(backbone s/step, OmniFM s/step, backbone peak MiB, OmniFM peak MiB), the two steppers interleaved."""
    plain = Stepper(task, False, size, batch, overrides)
    omni = Stepper(task, True, size, batch, overrides)
    times = {False: [], True: []}
    for i in range(warmup + steps):
        for key, stepper in ((False, plain), (True, omni)):
            t = stepper.step()
            if i >= warmup:
                times[key].append(t)
    return (
        statistics.median(times[False]),
        statistics.median(times[True]),
        peak_rss_mib(task, False, size, batch, 2, overrides),
        peak_rss_mib(task, True, size, batch, 2, overrides),
    )


def table(rows: dict[str, tuple[str, dict, int, int]], steps: int, warmup: int) -> float:
    """Print one row per ``name: (task, overrides, size, batch)``; returns the worst step-time ratio."""
    print("| network | input | batch | backbone ms/step | OmniFM ms/step | time ratio | backbone peak MiB | OmniFM peak MiB | memory ratio |")  # fmt: skip
    print("|" + "---|" * 9)
    worst = 0.0
    for name, (task, overrides, size, batch) in rows.items():
        t_plain, t_omni, m_plain, m_omni = measure(task, size, batch, steps, warmup, overrides)
        worst = max(worst, t_omni / t_plain)
        print(
            f"| {name} | {size} x {size} | {batch} | {1e3 * t_plain:.1f} | {1e3 * t_omni:.1f} | "
            f"{t_omni / t_plain:.3f} | {m_plain:.0f} | {m_omni:.0f} | {m_omni / m_plain:.3f} |",
            flush=True,
        )
    return worst


def attention_blocks(rows: dict[str, tuple[str, dict, int, int]], steps: int, warmup: int) -> float:
    """Print one row per ``name: (task, overrides, size, batch)``: OmniFM's fusion path (forward and backward)
    with the shipped attention blocks and with MONAI's, interleaved; returns the worst lean/MONAI ratio."""
    print("| network | input | batch | MONAI blocks ms | shipped blocks ms | lean/MONAI time ratio |")
    print("|" + "---|" * 6)
    worst = 0.0
    for name, (task, overrides, size, batch) in rows.items():
        stepper = Stepper(task, True, size, batch, overrides)
        nets = {"lean": stepper.net, "monai": copy.deepcopy(stepper.net)}
        for module in nets["monai"].modules():  # the same weights in MONAI's classes
            if type(module) is CrossAttention:
                module.__class__ = CrossAttentionBlock
            elif type(module) is TransformerLayer:
                module.__class__ = TransformerBlock
        image = stepper.inputs[0]
        tokens = (
            nets["lean"].adapter.encode(nets["lean"].backbone, *stepper.inputs)[0].detach().requires_grad_()
        )
        with torch.no_grad():
            fused = [net._fuse(image, tokens)[0] for net in nets.values()]
        if not torch.equal(*fused):
            raise RuntimeError(f"{name}: the shipped attention blocks and MONAI's compute different values.")
        times = {key: [] for key in nets}
        for i in range(warmup + steps):
            for key, net in nets.items():
                start = time.perf_counter()
                net._fuse(image, tokens)[0].sum().backward()
                if i >= warmup:
                    times[key].append(time.perf_counter() - start)
        lean, monai = (statistics.median(times[k]) for k in ("lean", "monai"))
        worst = max(worst, lean / monai)
        print(
            f"| {name} | {size} x {size} | {batch} | {1e3 * monai:.2f} | {1e3 * lean:.2f} | {lean / monai:.3f} |"
        )
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, help="input size of every bundle (default: each bundle's image_size)"
    )
    parser.add_argument("--batch", type=int, help="batch of every bundle (default: each bundle's batch_size)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--overrides", type=json.loads, default={}, help="bundle overrides (JSON), every task"
    )
    parser.add_argument("--paper_sizes", action="store_true", help="also the paper's backbone sizes")
    parser.add_argument(
        "--attention_blocks",
        action="store_true",
        help="also OmniFM's fusion with the shipped and MONAI's blocks",
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    shipped = {}
    for task in args.tasks:
        size, batch = shipped_shape(task)
        shipped[task] = (task, args.overrides, args.size or size, args.batch or batch)
    print(f"worst step-time ratio: {table(shipped, args.steps, args.warmup):.3f}")
    if args.attention_blocks:
        ratio = attention_blocks(shipped, 10 * args.steps, args.warmup)
        print(f"worst lean/MONAI attention time ratio: {ratio:.3f}")
    if args.paper_sizes:
        paper = {
            name: (task, {**over, **args.overrides}, size, args.batch or shipped_shape(task)[1])
            for name, (task, over, size) in PAPER_SIZES.items()
        }
        print(f"worst paper-size step-time ratio: {table(paper, args.steps, args.warmup):.3f}")


if __name__ == "__main__":
    main()
