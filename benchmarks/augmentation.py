"""Each bundle's training augmentations with MONAI's metadata tracking against the bundles' plain-tensor pipeline.

    python benchmarks/augmentation.py [--site outputs/reference_sites/icbm_t1] [--image_size 32] [--epochs 3]

Per bundle (2D ones; the reference sites hold 2D slices), on one reference site's training items: the bundle's
deterministic transforms are applied once (what ``CacheDataset`` caches), then ``--epochs`` passes of its random
augmentations (and super-resolution's degradation) run two ways, alternating pass by pass in one process:

* ``tracked``: ``Compose(deterministic + random + [EnsureTyped(track_meta=False)])``, the bundles' pipeline before
  :class:`~omnifm_monai.transforms.PlainTensorCompose` (MetaTensors through every augmentation, plain at the end);
* ``plain``: the bundle's ``train#preprocessing`` as shipped (``PlainTensorCompose``, ``plain_from`` = the
  deterministic part).

Both are built under the same seed, so they must produce the same values; every item of every pass is compared
(``identical``). Printed: ms per item (median over passes) and ``plain/tracked time ratio: R`` per bundle, then
``worst plain/tracked time ratio: R``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.transforms import Compose, EnsureTyped
from monai.utils import set_determinism

from omnifm_monai.fl.bundle import bundle_parser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BUNDLES, ROOT  # noqa: E402  (the shipped 2D bundles, by task)


def pipelines(bundle: Path, site: Path, image_size: int):
    """(cached items, tracked pipeline, shipped plain pipeline, index of the first augmentation) of a bundle."""
    overrides = {"dataset_dir": str(site), "image_size": image_size}
    parser = bundle_parser(bundle, overrides)
    deterministic = parser.get_parsed_content("train#deterministic_transforms")
    later = parser.get_parsed_content("train#random_transforms")
    if "degradation_transforms" in parser["train"]:
        later = later + parser.get_parsed_content("train#degradation_transforms")
    keys = sorted({k for t in later if hasattr(t, "keys") for k in t.keys} | {"image"})
    set_determinism(seed=0)
    tracked = Compose(deterministic + later + [EnsureTyped(keys, track_meta=False, allow_missing_keys=True)])
    set_determinism(seed=0)
    plain = bundle_parser(bundle, overrides).get_parsed_content("train#preprocessing")
    set_determinism(seed=None)
    data = parser.get_parsed_content("train#datalist")
    start = len(deterministic)
    cached = [tracked(dict(item), end=start) for item in data]
    return cached, tracked, plain, start


def one_pass(pipeline: Compose, cached: list, start: int) -> tuple[float, list]:
    begin = time.perf_counter()
    out = [pipeline(dict(item), start=start) for item in cached]
    return time.perf_counter() - begin, out


def same(a: dict, b: dict) -> bool:
    return all(
        torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a if isinstance(a[k], torch.Tensor)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default=str(ROOT / "outputs" / "reference_sites" / "icbm_t1"))
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(BUNDLES), choices=list(BUNDLES))
    args = parser.parse_args()
    site = Path(args.site)
    if not (site / "segmentation.json").is_file():
        raise SystemExit(
            f"{site}: not a reference site (no segmentation.json); build them with "
            "`python -m omnifm_monai.data build_reference_sites --output_dir outputs/reference_sites`."
        )
    torch.set_num_threads(1)
    print(f"site {site.name}, {args.image_size} x {args.image_size}, {args.epochs} passes, 1 thread")
    print("| bundle | items | tracked ms/item | plain ms/item | plain/tracked time ratio | identical |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for task, name in BUNDLES.items():
        if task not in args.tasks:
            continue
        cached, tracked, plain, start = pipelines(ROOT / "bundles" / name, site, args.image_size)
        times, identical = {"tracked": [], "plain": []}, True
        for _ in range(args.epochs):
            t_tracked, a = one_pass(tracked, cached, start)
            t_plain, b = one_pass(plain, cached, start)
            times["tracked"].append(t_tracked)
            times["plain"].append(t_plain)
            identical &= all(same(x, y) for x, y in zip(a, b, strict=True))
        per_item = {k: 1e3 * statistics.median(v) / len(cached) for k, v in times.items()}
        ratio = per_item["plain"] / per_item["tracked"]
        worst = max(worst, ratio)
        print(
            f"| {task} | {len(cached)} | {per_item['tracked']:.3f} | {per_item['plain']:.3f} | {ratio:.3f} | "
            f"{'yes' if identical else '**no**'} |",
            flush=True,
        )
    print(f"worst plain/tracked time ratio: {worst:.3f}")


if __name__ == "__main__":
    main()
