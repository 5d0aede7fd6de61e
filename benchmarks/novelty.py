"""How well OmniFM's novelty score (the spectral summary's distance to the bank) flags inputs of a modality
the model never trained on: AUROC of in- against out-of-modality images, and the share flagged at the
threshold calibrated on the training sites' validation splits (the bundles' ``NoveltyCalibration``).

For every seed folder of the given benchmark runs (``benchmarks/run.py`` writes them): the global model and
its bank (``global_model.pt``, ``bank.pt``), the
training sites' validation images (calibration) and test images (in distribution), and the test images of
each other site given (its task's datalist, else any datalist it has)::

    python benchmarks/novelty.py --runs outputs/benchmarks/default/runs/segmentation/unseen_site/flair/omnifm/scratch \\
        --sites_dir outputs/benchmarks/default/sites --others flair,ct,real_head_ct,real_icbm_t1

Prints a Markdown table; ``--csv`` writes the rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset

from omnifm_monai.handlers.novelty import novelty_scores

QUANTILE = 0.95


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """P(an outside score > an inside score), ties counted half (the Mann-Whitney statistic)."""
    diff = outside[:, None] - inside[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def _datalist(site: Path, task: str) -> Path | None:
    path = site / f"{task}.json"
    return path if path.exists() else next(iter(sorted(site.glob("*.json"))), None)


def _scores(network, preprocessing, site: Path, task: str, split: str) -> torch.Tensor:
    datalist = _datalist(site, task)
    if datalist is None:
        return torch.zeros(0)
    seen, items = set(), []
    for item in json.loads(datalist.read_text()).get(split, []):
        if item["image"] not in seen:  # VQA lists an image once per question
            seen.add(item["image"])
            items.append({"image": str(site / item["image"])})
    loader = DataLoader(Dataset(items, transform=preprocessing), batch_size=1, num_workers=0)
    return novelty_scores(network, loader)


def evaluate_run(seed_dir: Path, sites_dir: Path, others: list[str]) -> list[dict]:
    run = json.loads((seed_dir / "run.json").read_text())
    bundle = Path(run["bundle"])
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "inference.json")])
    parser.update({"bundle_root": str(bundle), **run.get("overrides", {})})
    network = parser.get_parsed_content("network_def")
    state = torch.load(seed_dir / "global_model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state, strict=False)  # runs made before the threshold buffer existed lack it
    network.bank.load_tensors(torch.load(seed_dir / "bank.pt", map_location="cpu", weights_only=True))
    preprocessing, task = parser.get_parsed_content("preprocessing"), parser["task"]
    trained = [Path(p).name for p in run["sites"]] if isinstance(run["sites"], list) else list(run["sites"])
    calibration = torch.cat(
        [_scores(network, preprocessing, sites_dir / s, task, "validation") for s in trained]
    )
    threshold = float(torch.quantile(calibration, QUANTILE))
    inside = torch.cat([_scores(network, preprocessing, sites_dir / s, task, "test") for s in trained])
    rows = [
        {"run": str(seed_dir), "group": "trained sites (test)", "images": len(inside),
         "novelty": float(inside.mean()), "auroc": None, "flagged": float((inside > threshold).float().mean()),
         "threshold": threshold}
    ]  # fmt: skip
    for other in others:
        if other in trained:
            continue
        outside = _scores(network, preprocessing, sites_dir / other, task, "test")
        if len(outside):
            rows.append(
                {"run": str(seed_dir), "group": other, "images": len(outside), "novelty": float(outside.mean()),
                 "auroc": auroc(inside, outside), "flagged": float((outside > threshold).float().mean()),
                 "threshold": threshold}
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders holding seed*/ subfolders")
    parser.add_argument("--sites_dir", required=True)
    parser.add_argument("--others", default="", help="comma-separated sites scored against the trained ones")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    others = [s for s in args.others.split(",") if s]
    rows = []
    for run in args.runs:
        for seed_dir in sorted(Path(run).glob("seed*")):
            rows += evaluate_run(seed_dir, Path(args.sites_dir), others)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print("| run | group | seeds | images | novelty | AUROC vs trained | flagged at q95 |")
    print("|---|---|---|---|---|---|---|")
    groups: dict = {}
    for row in rows:
        groups.setdefault((str(Path(row["run"]).parent), row["group"]), []).append(row)
    for (run, group), members in groups.items():
        aurocs = [m["auroc"] for m in members if m["auroc"] is not None]
        name = "/".join(Path(run).parts[-4:])
        novelty = statistics.fmean(m["novelty"] for m in members)
        auroc_text = f"{statistics.fmean(aurocs):.3f}" if aurocs else "-"
        flagged = statistics.fmean(m["flagged"] for m in members)
        print(
            f"| {name} | {group} | {len(members)} | {members[0]['images']} | {novelty:.3f} | {auroc_text} | {flagged:.2f} |"
        )
    return rows


if __name__ == "__main__":
    main()
