"""The step-time benchmark measures what the bundles ship: their optimiser over every parameter, OmniFM against
the same backbone, and MONAI's attention blocks computing what the shipped ones compute."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import overhead  # noqa: E402


@pytest.mark.parametrize("task", overhead.TASKS)
def test_both_networks_train_with_the_bundles_optimiser_from_the_same_backbone(task):
    size, batch = overhead.shipped_shape(task)
    assert size % 16 == 0 and batch >= 1
    plain, omnifm = (overhead.Stepper(task, omni, 32, 2) for omni in (False, True))
    assert plain.net.tokenizer is None and omnifm.net.tokenizer is not None
    assert float(omnifm.net.gate.value) > 0  # the fused path reaches the output
    for stepper in (plain, omnifm):
        assert type(stepper.opt) is torch.optim.AdamW and stepper.opt.defaults["foreach"] is True
        grouped = [id(p) for group in stepper.opt.param_groups for p in group["params"]]
        assert sorted(grouped) == sorted(id(p) for p in stepper.net.parameters())  # each parameter once
    backbone = omnifm.net.backbone.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in plain.net.backbone.state_dict().items())
    before = [p.detach().clone() for p in omnifm.net.parameters()]
    assert omnifm.step() > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, omnifm.net.parameters(), strict=True))


def test_the_attention_comparison_times_two_networks_that_compute_the_same(capsys, monkeypatch):
    rows = {"vqa": ("vqa", {}, 32, 2)}
    assert 0 < overhead.attention_blocks(rows, steps=2, warmup=0) < 10
    assert "| vqa | 32 x 32 | 2 |" in capsys.readouterr().out
    # blocks that compute something else are refused, not timed
    monkeypatch.setattr(overhead.CrossAttention, "forward", lambda self, x, context=None: 2 * x)
    with pytest.raises(RuntimeError, match="compute different values"):
        overhead.attention_blocks(rows, steps=2, warmup=0)
