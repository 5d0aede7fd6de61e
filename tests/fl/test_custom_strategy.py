"""A strategy defined here, outside ``omnifm_monai.fl``: its server rule and client hooks run in both engines.

The class is found by its dotted path (``test_custom_strategy.MedianOfSites``): the simulator imports it in
this process, NVFlare's server and sites import it in theirs (this folder is put on ``PYTHONPATH``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnifm_monai.fl import simulate
from omnifm_monai.fl.simulator import load_checkpoint
from omnifm_monai.fl.strategies import STRATEGIES, ClientUpdate, Strategy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUNDLE = str(ROOT / "bundles" / "omnifm_segmentation")
SMALL = {"image_size": 32, "batch_size": 8}
SITES = ["icbm_t1", "icbm_t2w"]
DOTTED = "test_custom_strategy.MedianOfSites"


class MedianOfSites(Strategy):
    """Coordinate-wise median of the sites' weights (Yin et al., ICML 2018); each site counts its own rounds
    and reports its local steps, which the server keeps per site."""

    name = "median_of_sites"

    def init_state(self, global_weights):
        return {"steps": {}}

    def aggregate(self, global_weights, updates, state):
        full = [u.full_weights(global_weights) for u in updates]
        new = {}
        for k, ref in full[0].items():
            stacked = torch.stack([w[k].double() for w in full])
            new[k] = stacked.median(0).values.to(ref.dtype) if ref.is_floating_point() else ref.clone()
        steps = {**state["steps"], **{u.site: int(u.extra["steps"]) for u in updates}}
        return new, {**state, "steps": steps}

    def before_training(self, ctx):
        ctx.state["rounds_seen"] = ctx.state.get("rounds_seen", 0) + 1

    def upload(self, ctx, local, iterations):
        return {"steps": torch.tensor(iterations)}


def test_the_server_rule_is_the_coordinate_wise_median():
    w = {"p": torch.zeros(3), "n": torch.tensor(1)}
    ups = [
        ClientUpdate(s, {"p": torch.tensor(v), "n": torch.tensor(i)}, 1, extra={"steps": torch.tensor(i + 2)})
        for i, (s, v) in enumerate([("a", [1.0, 9.0, 0.0]), ("b", [2.0, -1.0, 5.0]), ("c", [7.0, 3.0, 4.0])])
    ]
    new, state = MedianOfSites().aggregate(w, ups, MedianOfSites().init_state(w))
    assert torch.equal(new["p"], torch.tensor([2.0, 3.0, 4.0]))
    assert state["steps"] == {"a": 2, "b": 3, "c": 4}


@pytest.mark.slow
def test_a_strategy_outside_the_package_runs_in_the_simulator_and_in_nvflare(
    reference_sites, tmp_path, monkeypatch, nvflare_job
):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(
        "OMNIFM_THREADS", str(torch.get_num_threads())
    )  # the simulator's float summation order
    simulate(
        BUNDLE,
        DOTTED,
        rounds=2,
        output=str(tmp_path / "sim"),
        sites={s: str(reference_sites / s) for s in SITES},
        overrides=SMALL,
        test=False,
    )
    checkpoint = load_checkpoint(tmp_path / "sim" / "checkpoint.pt")
    # the client hooks ran on every site, every round; the server kept what they uploaded
    assert all(checkpoint["sites"][s]["client_state"]["rounds_seen"] == 2 for s in SITES)
    steps = checkpoint["server_state"]["steps"]
    assert set(steps) == set(SITES) and all(v > 0 for v in steps.values())
    job = nvflare_job
    recipe = job.build_recipe(
        BUNDLE,
        DOTTED,
        SITES,
        rounds=2,
        site_dirs={s: str(reference_sites / s) for s in SITES},
        overrides=SMALL,
        staging=str(tmp_path / "src"),
    )
    result = job.check_result(
        job.run(recipe, SITES, "sim", workspace=str(tmp_path / "ws")),
        DOTTED,
        rounds=2,
        bundle=BUNDLE,
        sites=SITES,
    )
    unequal = [k for k, v in checkpoint["global_weights"].items() if not torch.equal(result["weights"][k], v)]
    assert not unequal, f"{len(unequal)} tensors differ between NVFlare and the simulator, e.g. {unequal[:3]}"
    assert result["state"]["steps"] == steps


def test_importing_the_strategies_loads_no_engine():
    code = (
        "import sys, omnifm_monai.fl.strategies; "
        "print(sorted(m for m in sys.modules if m.startswith(('omnifm_monai.fl.', 'nvflare')) and '.strategies' not in m))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]", out


ENGINE_FILES = [
    ROOT / "omnifm_monai" / "fl" / f
    for f in ("client.py", "engine.py", "simulator.py", "nvflare.py", "bundle.py")
] + [ROOT / "federated" / f for f in ("client.py", "job.py")]


def _names_compared(tree: ast.AST) -> list[tuple[int, str]]:
    """Strategy names used in comparisons (``==``, ``!=``, ``in``): the shape of an ``if name == ...`` branch."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and part.value in STRATEGIES:
                    found.append((node.lineno, part.value))
    return found


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_engine_or_client_code_branches_on_a_strategy_name(path):
    """Engines ask strategies through hooks and class attributes, never by comparing names."""
    assert _names_compared(ast.parse(path.read_text())) == []
    assert _names_compared(ast.parse("if strategy.name == 'ditto': pass"))  # the check sees such a branch
