"""Every shipped 2D bundle's training pipeline (PlainTensorCompose) computes the values of the same pipeline with
MONAI's metadata tracked through every augmentation, and returns plain tensors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import augmentation  # noqa: E402


@pytest.mark.parametrize("task", sorted(augmentation.BUNDLES))
def test_a_bundles_plain_pipeline_equals_the_tracked_one(task, reference_sites):
    bundle = augmentation.ROOT / "bundles" / augmentation.BUNDLES[task]
    cached, tracked, plain, start = augmentation.pipelines(bundle, reference_sites / "icbm_t1", 32)
    cached = cached[:12]
    for _ in range(2):  # two passes: later draws of the random streams too
        _, a = augmentation.one_pass(tracked, cached, start)
        _, b = augmentation.one_pass(plain, cached, start)
        assert all(type(item["image"]) is torch.Tensor for item in b)
        assert all(augmentation.same(x, y) for x, y in zip(a, b, strict=True))
    # the comparison can fail: the same transforms seeded differently draw other augmentations
    augmentation.set_determinism(seed=1)
    reseeded = augmentation.Compose(list(tracked.transforms))
    augmentation.set_determinism(seed=None)
    _, other = augmentation.one_pass(reseeded, cached, start)
    assert not all(augmentation.same(x, y) for x, y in zip(a, other, strict=True))


def test_the_benchmark_names_a_missing_site(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["augmentation.py", "--site", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="not a reference site"):
        augmentation.main()
