"""benchmarks/novelty.py: the AUROC it reports equals the rank definition."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import novelty  # noqa: E402


def test_auroc_is_the_probability_that_an_outside_score_ranks_higher():
    torch.manual_seed(0)
    inside, outside = torch.randn(40), torch.randn(30) + 0.7
    pairs = [(o > i) + 0.5 * (o == i) for o in outside.tolist() for i in inside.tolist()]
    assert abs(novelty.auroc(inside, outside) - sum(pairs) / len(pairs)) < 1e-6
    assert novelty.auroc(inside, inside + 10) == 1.0 and novelty.auroc(inside + 10, inside) == 0.0
    assert novelty.auroc(torch.ones(5), torch.ones(7)) == 0.5  # ties count half
    assert abs(novelty.auroc(inside, outside) + novelty.auroc(outside, inside) - 1.0) < 1e-6
