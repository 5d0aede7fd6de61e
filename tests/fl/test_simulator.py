"""The federated simulator end to end on small real reference sites (32 x 32 slices)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from omnifm_monai.fl import OmniFMClientAlgo, simulate
from omnifm_monai.fl.strategies import STRATEGIES
from omnifm_monai.networks.blocks import is_private

BUNDLE = str(Path(__file__).resolve().parents[2] / "bundles" / "omnifm_segmentation")
SMALL = {"image_size": 32, "batch_size": 8}
SITES = ["icbm_t1", "icbm_t2w"]


def _run(tmp, sites_root, strategy, rounds=1, sites=SITES, **kw):
    return simulate(
        BUNDLE,
        strategy,
        rounds=rounds,
        output=str(tmp),
        sites={s: str(sites_root / s) for s in sites},
        overrides=kw.pop("overrides", SMALL),
        test=kw.pop("test", False),
        **kw,
    )


def _rows(out):
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_fedavg_with_one_site_equals_local_training(reference_sites, tmp_path):
    _run(tmp_path / "fedavg", reference_sites, "fedavg", rounds=2, sites=["icbm_t1"])
    _run(tmp_path / "local", reference_sites, "local", rounds=2, sites=["icbm_t1"])
    fedavg = torch.load(tmp_path / "fedavg" / "global_model.pt", weights_only=True)
    local = torch.load(tmp_path / "local" / "checkpoint.pt", weights_only=True)["sites"]["icbm_t1"][
        "private_state"
    ]
    assert set(fedavg) <= set(local)
    for k, v in fedavg.items():
        assert torch.equal(v, local[k]), k


def test_weight_differences_are_not_subtracted_twice(reference_sites, tmp_path):
    # one round: sending local - global gives the global model full weights give, up to float32 rounding
    # (over more rounds Adam amplifies that rounding, so later rounds are not compared)
    _run(tmp_path / "full", reference_sites, "fedavg", sites=["icbm_t1", "icbm_t2w"])
    _run(tmp_path / "diff", reference_sites, "fedavg", sites=["icbm_t1", "icbm_t2w"], send_weight_diff=True)
    a = torch.load(tmp_path / "full" / "global_model.pt", weights_only=True)
    b = torch.load(tmp_path / "diff" / "global_model.pt", weights_only=True)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_omnifm_round_shares_weights_keeps_private_state_and_merges_the_bank(reference_sites, tmp_path):
    results = _run(tmp_path, reference_sites, "omnifm", rounds=1, test=True)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    global_w, sites = ckpt["global_weights"], ckpt["sites"]
    assert not any(is_private(k) or k.startswith("bank.") for k in global_w)
    suffixes = [sites[s]["private_state"]["prompt.private_suffix"] for s in SITES]
    assert not torch.equal(*suffixes)  # trained apart, never averaged
    bank = ckpt["server_state"]["bank"]
    for site_id in range(len(SITES)):
        assert 1 <= int((bank["site"] == site_id).sum()) <= 16  # each site's Q centroids
    assert len(bank["keys"]) <= 256
    assert torch.equal(torch.load(tmp_path / "bank.pt", weights_only=True)["keys"], bank["keys"])
    assert set(results) == set(SITES) and all(math.isfinite(m["val_mean_dice"]) for m in results.values())
    rows = _rows(tmp_path)
    assert {r["site"] for r in rows if r["split"] == "validation"} == set(SITES)
    assert any(r["split"] == "test" for r in rows)
    assert list((tmp_path / "tensorboard").iterdir())
    # a fresh client for each site, given the global weights, computes with exactly them plus its own private state
    for site in SITES:
        client = OmniFMClientAlgo(
            BUNDLE,
            "omnifm",
            site=site,
            dataset_dir=str(reference_sites / site),
            train_kwargs=SMALL,
            workdir=str(tmp_path / "check"),
        )
        client.initialize()
        client.private_state = sites[site]["private_state"]
        client._load(global_w)
        state = client.network.state_dict()
        assert all(torch.equal(state[k], v) for k, v in global_w.items())
        assert torch.equal(
            state["prompt.private_suffix"], sites[site]["private_state"]["prompt.private_suffix"]
        )


def test_a_failing_site_drops_out_and_the_job_goes_on(reference_sites, tmp_path, monkeypatch):
    original = OmniFMClientAlgo.train
    calls = []

    def flaky(self, data, extra=None):
        calls.append(self.site)
        if self.site == "icbm_t2w" and calls.count("icbm_t2w") == 1:  # fails in its first round only
            raise RuntimeError("disk full")
        return original(self, data, extra)

    monkeypatch.setattr(OmniFMClientAlgo, "train", flaky)
    _run(tmp_path, reference_sites, "fedavg", rounds=2)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    aggregated = [float(r["value"]) for r in _rows(tmp_path) if r["metric"] == "sites_aggregated"]
    assert aggregated == [1.0, 2.0]
    assert all(torch.isfinite(v).all() for v in ckpt["global_weights"].values() if v.is_floating_point())


@pytest.mark.slow
def test_resume_after_a_kill_equals_an_uninterrupted_run(reference_sites, tmp_path, monkeypatch):
    _run(tmp_path / "full", reference_sites, "omnifm", rounds=2)
    original = OmniFMClientAlgo.train
    calls = {"n": 0}

    def killed(self, data, extra=None):
        calls["n"] += 1
        if calls["n"] == 4:  # round 2, second site: the process dies mid-round
            raise KeyboardInterrupt
        return original(self, data, extra)

    monkeypatch.setattr(OmniFMClientAlgo, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "resumed", reference_sites, "omnifm", rounds=2)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["round"] == 0
    monkeypatch.setattr(OmniFMClientAlgo, "train", original)
    _run(tmp_path / "resumed", reference_sites, "omnifm", rounds=2)
    full = torch.load(tmp_path / "full" / "global_model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "global_model.pt", weights_only=True)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k

    def strip(rows):
        return [(r["round"], r["site"], r["metric"], r["value"]) for r in rows if r["split"] == "validation"]

    assert strip(_rows(tmp_path / "full")) == strip(_rows(tmp_path / "resumed"))


def test_a_corrupt_checkpoint_is_refused(reference_sites, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="refusing"):
        _run(tmp_path, reference_sites, "fedavg")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_runs_a_round(reference_sites, tmp_path, strategy):
    _run(tmp_path, reference_sites, strategy, rounds=2)
    values = [float(r["value"]) for r in _rows(tmp_path) if r["metric"] == "val_mean_dice"]
    assert values and all(math.isfinite(v) and 0 <= v <= 1 for v in values)


def test_fine_tuning_starts_from_the_matching_tensors_of_another_run(reference_sites, tmp_path):
    """``init_weights``: a FedAvg model (OmniFM parts off) seeds the backbone of an OmniFM run; the OmniFM
    parts, absent from it, keep their own initialisation (rounds=0: the initial global model is saved)."""
    _run(tmp_path / "pre", reference_sites, "fedavg", rounds=1)
    pre = torch.load(tmp_path / "pre" / "global_model.pt", weights_only=True)
    _run(tmp_path / "fresh", reference_sites, "omnifm", rounds=0, seed=3)
    _run(
        tmp_path / "tuned",
        reference_sites,
        "omnifm",
        rounds=0,
        seed=3,
        init_weights=str(tmp_path / "pre" / "global_model.pt"),
    )
    fresh, tuned = (
        torch.load(tmp_path / d / "global_model.pt", weights_only=True) for d in ("fresh", "tuned")
    )
    backbone = [k for k in tuned if k in pre and pre[k].shape == tuned[k].shape]
    assert any(k.startswith("backbone.") for k in backbone)
    assert all(torch.equal(tuned[k], pre[k]) for k in backbone)
    assert any(
        not torch.equal(fresh[k], pre[k]) for k in backbone if pre[k].is_floating_point()
    )  # it did change them
    assert all(torch.equal(tuned[k], fresh[k]) for k in tuned if k not in pre)


def test_centralized_model_is_tested_on_every_site(reference_sites, tmp_path):
    results = _run(tmp_path, reference_sites, "centralized", rounds=1, test=True)
    assert set(results) == set(SITES)  # not the pooled folder
    pooled = {r["site"] for r in _rows(tmp_path) if r["split"] == "validation"}
    assert pooled == {"pooled"} and {r["site"] for r in _rows(tmp_path) if r["split"] == "test"} == set(SITES)


def test_initial_weights_of_another_network_are_refused():
    from omnifm_monai.fl.simulator import load_matching

    net = torch.nn.Linear(3, 2)
    assert load_matching(net, {"weight": torch.ones(2, 3), "bias": torch.ones(5)}) == ["weight"]
    assert torch.equal(net.weight, torch.ones(2, 3))
    with pytest.raises(ValueError, match="no tensor"):
        load_matching(net, {"conv.weight": torch.ones(1)})


def test_an_unseen_site_is_tested_with_the_global_model_and_a_fresh_private_part(reference_sites, tmp_path):
    from omnifm_monai.fl.engine import evaluation_data, make_clients, make_strategy, site_network

    unseen = {"icbm_t2w": str(reference_sites / "icbm_t2w")}
    results = _run(
        tmp_path / "run", reference_sites, "fedbn", sites=["icbm_t1"], unseen_sites=unseen, test=True
    )
    assert set(results) == {"icbm_t1", "icbm_t2w"}
    assert set(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["sites"]) == {
        "icbm_t1"
    }  # never trained
    # reference: a client of the unseen site on the network as it was built (its norms untouched), the global weights loaded
    strategy = make_strategy(BUNDLE, "fedbn", ["icbm_t1"])[0]
    network = site_network(BUNDLE, strategy, SMALL, seed=0, dataset_dir=str(reference_sites / "icbm_t1"))
    client = make_clients(BUNDLE, strategy, unseen, network, SMALL, workdir=tmp_path / "check")["icbm_t2w"]
    global_weights = torch.load(tmp_path / "run" / "global_model.pt", weights_only=True)
    expected = client.evaluate(evaluation_data(global_weights, {}), extra={"split": "test"}).metrics
    assert results["icbm_t2w"] == expected
    with pytest.raises(ValueError, match="no global model"):
        _run(tmp_path / "local", reference_sites, "local", sites=["icbm_t1"], unseen_sites=unseen, test=True)


def test_omnifm_diagnostics_are_logged_per_round_and_site(reference_sites, tmp_path):
    _run(tmp_path, reference_sites, "omnifm", rounds=2)
    rows = [r for r in _rows(tmp_path) if r["split"] == "diagnostics"]
    bank = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["server_state"]["bank"]
    for rnd in ("0", "1"):
        for site in SITES:
            got = {r["metric"]: float(r["value"]) for r in rows if r["round"] == rnd and r["site"] == site}
            assert set(got) == {"gate", "token_spread", "bank_size", "own_modality_share"}, got
            assert (
                -1 <= got["gate"] <= 1
                and 0 <= got["token_spread"] <= 2
                and 0 <= got["own_modality_share"] <= 1
            )
            if rnd == "1":
                assert got["bank_size"] == len(bank["keys"])  # the bank the server merged last


class _LearningRateLog(STRATEGIES["fedavg"]):
    """FedAvg that records, per round and site, the learning rate the site's optimiser trains with."""

    seen: list[tuple[str, float]] = []

    def before_training(self, ctx):
        self.seen.append((ctx.site, ctx.trainer.optimizer.param_groups[0]["lr"]))


def test_cosine_schedule_sets_every_sites_learning_rate_each_round(reference_sites, tmp_path):
    from omnifm_monai.fl.engine import round_lr_scale

    assert [round_lr_scale("constant", r, 3) for r in range(3)] == [1.0, 1.0, 1.0]
    scales = [round_lr_scale("cosine", r, 3) for r in range(3)]
    assert scales[0] == 1.0 and all(a > b > 0 for a, b in zip(scales, scales[1:], strict=False))
    assert math.isclose(scales[1], 0.75) and math.isclose(scales[2], 0.25)  # (1 + cos(pi r / 3)) / 2
    with pytest.raises(ValueError, match="lr_schedule"):
        round_lr_scale("step", 0, 3)
    _LearningRateLog.seen = []
    _run(tmp_path / "run", reference_sites, _LearningRateLog(), rounds=3, lr_schedule="cosine",
         overrides={**SMALL, "learning_rate": 0.002})  # fmt: skip
    expected = [(site, 0.002 * s) for s in scales for site in SITES]
    assert [(site, pytest.approx(lr)) for site, lr in _LearningRateLog.seen] == expected
    # the schedule spans the run's rounds: a resume with another number of rounds is refused
    with pytest.raises(ValueError, match="another configuration"):
        _run(tmp_path / "run", reference_sites, _LearningRateLog(), rounds=4, lr_schedule="cosine",
             overrides={**SMALL, "learning_rate": 0.002})  # fmt: skip
