"""The federated simulator end to end on small real reference sites (32 x 32 slices)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from omnifm_monai.fl import OmniFMClientAlgo, simulate
from omnifm_monai.fl.simulator import load_checkpoint
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
    local = load_checkpoint(tmp_path / "local" / "checkpoint.pt")["sites"]["icbm_t1"]["private_state"]
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


def test_the_strategy_is_resolved_from_the_network_the_run_overrides():
    from omnifm_monai.fl.engine import make_strategy, site_network

    overrides = {**SMALL, "network_def#spectral_dim": 16, "network_def#bank_capacity": 24}
    strategy = make_strategy(BUNDLE, "omnifm", SITES, overrides=overrides)[0]
    network = site_network(BUNDLE, strategy, overrides)
    # the server's bank is the one the sites' networks hold: same token size and capacity
    assert (strategy.bank_config["embed_dim"], strategy.bank_config["capacity"]) == (16, 24)
    assert (network.bank.embed_dim, network.bank.capacity) == (16, 24)
    assert make_strategy(BUNDLE, "omnifm", SITES)[0].bank_config["embed_dim"] == 32  # the bundle's own


def test_omnifm_round_shares_weights_keeps_private_state_and_merges_the_bank(reference_sites, tmp_path):
    results = _run(tmp_path, reference_sites, "omnifm", rounds=1, test=True)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
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
    # the personal pathway moved at the default settings: FiLM maps left zero, the private gates left 0
    assert any(v.abs().sum() > 0 for k, v in global_w.items() if k.startswith("film.maps"))
    assert all(float(sites[s]["private_state"]["private_gate.alpha"]) != 0 for s in SITES)
    # what a site that never trained starts from: between the sites' own private parameters, equal to neither
    onboarding = ckpt["server_state"]["onboarding"]
    assert "prompt.private_suffix" in onboarding and not any(k.startswith("bank.") for k in onboarding)
    for key, mean in onboarding.items():
        a, b = (sites[s]["private_state"][key].float() for s in SITES)
        assert (mean >= torch.minimum(a, b) - 1e-6).all() and (mean <= torch.maximum(a, b) + 1e-6).all(), key
    # a fresh client for each site, given the global weights, computes with exactly them plus its own private state
    x, outputs = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)), []
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
        with torch.no_grad():
            outputs.append(client.network.eval()(x))
    assert not torch.allclose(*outputs, atol=1e-4)  # one global model, a personal output per site


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
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
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
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["round"] == 0
    monkeypatch.setattr(OmniFMClientAlgo, "train", original)
    _run(tmp_path / "resumed", reference_sites, "omnifm", rounds=2)
    full = torch.load(tmp_path / "full" / "global_model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "global_model.pt", weights_only=True)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k

    def strip(rows):
        return [(r["round"], r["site"], r["metric"], r["value"]) for r in rows if r["split"] == "validation"]

    assert strip(_rows(tmp_path / "full")) == strip(_rows(tmp_path / "resumed"))


def test_metric_rows_are_written_once_wherever_a_run_is_killed(reference_sites, tmp_path, monkeypatch):
    """A round's rows are appended before the checkpoint that covers them. Killed between the two (here in round
    0, before any checkpoint), after the test phase's rows but before its end, or in the middle of a line, the
    resumed run has every (round, site, split, metric) row once: the rows of an uninterrupted run."""
    from omnifm_monai.fl import simulator

    _run(tmp_path / "full", reference_sites, "fedavg", test=True)
    run, save, write = tmp_path / "killed", simulator.save_checkpoint, simulator._Writer.write

    def killed_save(path, payload):  # the process dies after the round's rows, before its checkpoint
        raise KeyboardInterrupt

    def killed_test(self, rows):  # the process dies after the test phase's rows, before test_metrics.json
        write(self, rows)
        if any(r[2] == "test" for r in rows):
            raise KeyboardInterrupt

    monkeypatch.setattr(simulator, "save_checkpoint", killed_save)
    with pytest.raises(KeyboardInterrupt):
        _run(run, reference_sites, "fedavg", test=True)
    assert any(r["split"] == "validation" for r in _rows(run)) and not (run / "checkpoint.pt").exists()
    monkeypatch.setattr(simulator, "save_checkpoint", save)
    monkeypatch.setattr(simulator._Writer, "write", killed_test)
    with pytest.raises(KeyboardInterrupt):
        _run(run, reference_sites, "fedavg", test=True)
    assert any(r["split"] == "test" for r in _rows(run)) and not (run / "test_metrics.json").exists()
    monkeypatch.setattr(simulator._Writer, "write", write)
    for name, half in (("metrics.csv", b"1,icbm_t1,valid"), ("metrics.jsonl", b'{"round": 1, "si')):
        with open(run / name, "ab") as f:
            f.write(half)  # a line cut short by a kill
    _run(run, reference_sites, "fedavg", test=True)

    def keys(out):
        return [(r["round"], r["site"], r["split"], r["metric"]) for r in _rows(out)]

    def values(out):  # every row but the timings
        return {
            key: r["value"] for key, r in zip(keys(out), _rows(out), strict=True) if "seconds" not in key[3]
        }

    assert len(set(keys(run))) == len(keys(run)) and sorted(keys(run)) == sorted(keys(tmp_path / "full"))
    assert values(run) == values(tmp_path / "full")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted((str(r["round"]), r["site"], r["split"], r["metric"]) for r in lines) == sorted(keys(run))


def test_a_corrupt_or_altered_checkpoint_is_refused(reference_sites, tmp_path):
    from omnifm_monai.fl.simulator import save_checkpoint

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="refusing"):
        _run(tmp_path / "junk", reference_sites, "fedavg")
    run = tmp_path / "run"
    _run(run, reference_sites, "fedavg", rounds=1)
    good = load_checkpoint(run / "checkpoint.pt")
    assert good["round"] == 0 and good["run_config"]["strategy"] == "fedavg"
    stored = torch.load(run / "checkpoint.pt", weights_only=True)
    stored["content"][len(stored["content"]) // 2] ^= 1  # one flipped bit in the middle of the state
    torch.save(stored, run / "checkpoint.pt")
    with pytest.raises(RuntimeError, match="SHA-256"):
        _run(run, reference_sites, "fedavg", rounds=2)
    # a well-formed checkpoint of another run configuration does not resume this one
    save_checkpoint(run / "checkpoint.pt", {**good, "run_config": {**good["run_config"], "seed": 7}})
    with pytest.raises(ValueError, match="another configuration"):
        _run(run, reference_sites, "fedavg", rounds=2)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_runs_a_round(reference_sites, tmp_path, strategy):
    _run(tmp_path, reference_sites, strategy, rounds=2)
    values = [float(r["value"]) for r in _rows(tmp_path) if r["metric"] == "val_mean_dice"]
    assert values and all(math.isfinite(v) and 0 <= v <= 1 for v in values)


def test_fine_tuning_starts_from_the_matching_tensors_of_another_run(reference_sites, tmp_path, monkeypatch):
    """``init_weights``: a FedAvg model (OmniFM parts off) seeds the backbone of an OmniFM run; the OmniFM
    parts, absent from it, keep their own initialisation."""
    from omnifm_monai.fl import simulator
    from omnifm_monai.fl.engine import load_matching, make_strategy, site_network

    _run(tmp_path / "pre", reference_sites, "fedavg", rounds=1)
    pre = torch.load(tmp_path / "pre" / "global_model.pt", weights_only=True)
    started = {}

    def spy(network, weights):  # the network the run starts from, right after the weights are loaded
        loaded = load_matching(network, weights)
        started.update({k: v.detach().clone() for k, v in network.state_dict().items()})
        return loaded

    monkeypatch.setattr(simulator, "load_matching", spy)
    _run(
        tmp_path / "tuned",
        reference_sites,
        "omnifm",
        rounds=1,
        seed=3,
        init_weights=str(tmp_path / "pre" / "global_model.pt"),
    )
    strategy = make_strategy(BUNDLE, "omnifm", SITES, dataset_dir=str(reference_sites / SITES[0]))[0]
    fresh = site_network(
        BUNDLE, strategy, SMALL, seed=3, dataset_dir=str(reference_sites / SITES[0])
    ).state_dict()
    backbone = [k for k in started if k in pre and pre[k].shape == started[k].shape]
    assert any(k.startswith("backbone.") for k in backbone)
    assert all(torch.equal(started[k], pre[k]) for k in backbone)
    assert any(
        not torch.equal(fresh[k], pre[k]) for k in backbone if pre[k].is_floating_point()
    )  # it did change them
    assert all(torch.equal(started[k], fresh[k]) for k in started if k not in pre)


def test_centralized_model_is_tested_on_every_site(reference_sites, tmp_path):
    results = _run(tmp_path, reference_sites, "centralized", rounds=1, test=True)
    assert set(results) == set(SITES)  # not the pooled folder
    pooled = {r["site"] for r in _rows(tmp_path) if r["split"] == "validation"}
    assert pooled == {"pooled"} and {r["site"] for r in _rows(tmp_path) if r["split"] == "test"} == set(SITES)


def test_pooled_site_points_at_every_sites_files_from_a_relative_site_folder(tmp_path, monkeypatch):
    from omnifm_monai.fl.simulator import _pooled_site

    items = {
        "a": {"image": "a.nii.gz", "label": 1},
        "b": {"image": ["b1.nii.gz", "b2.nii.gz"], "label": "b_seg.nii.gz"},
    }
    for site, item in items.items():
        (tmp_path / "sites" / site).mkdir(parents=True)
        for f in [
            *(item["image"] if site == "b" else [item["image"]]),
            *([item["label"]] if site == "b" else []),
        ]:
            (tmp_path / "sites" / site / f).write_text("")
        datalist = {"modality": "MR", "training": [item], "validation": [item], "test": [item]}
        (tmp_path / "sites" / site / "classification.json").write_text(json.dumps(datalist))
    monkeypatch.chdir(tmp_path)  # the benchmark's --workdir may be relative
    pooled = _pooled_site({"a": "sites/a", "b": "sites/b"}, "classification", Path("run/pooled_data"))
    datalist = json.loads((Path(pooled["pooled"]) / "classification.json").read_text())
    assert [item["label"] for item in datalist["training"]][0] == 1  # a class label stays a class label
    paths = [
        Path(pooled["pooled"]) / p  # read as the bundle reads it: relative to the pooled folder
        for item in datalist["training"]
        for value in (item["image"], item["label"])
        if not isinstance(value, int)
        for p in (value if isinstance(value, list) else [value])
    ]
    assert len(paths) == 4 and all(p.is_file() for p in paths)


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
    assert set(load_checkpoint(tmp_path / "run" / "checkpoint.pt")["sites"]) == {"icbm_t1"}  # never trained
    # reference: a client of the unseen site on the network as it was built (its norms untouched), the global weights loaded
    strategy = make_strategy(BUNDLE, "fedbn", ["icbm_t1"])[0]
    network = site_network(BUNDLE, strategy, SMALL, seed=0, dataset_dir=str(reference_sites / "icbm_t1"))
    client = make_clients(BUNDLE, strategy, unseen, network, SMALL, workdir=tmp_path / "check")["icbm_t2w"]
    global_weights = torch.load(tmp_path / "run" / "global_model.pt", weights_only=True)
    expected = client.evaluate(evaluation_data(global_weights, {}), extra={"split": "test"}).metrics
    assert results["icbm_t2w"] == expected
    with pytest.raises(ValueError, match="no global model"):
        _run(tmp_path / "local", reference_sites, "local", sites=["icbm_t1"], unseen_sites=unseen, test=True)


@pytest.mark.parametrize("bank_keys", ["mean", "tokens"])
def test_omnifm_diagnostics_are_logged_per_round_and_site(reference_sites, tmp_path, bank_keys):
    _run(
        tmp_path, reference_sites, "omnifm", rounds=2, overrides={**SMALL, "network_def#bank_keys": bank_keys}
    )
    rows = [r for r in _rows(tmp_path) if r["split"] == "diagnostics"]
    bank = load_checkpoint(tmp_path / "checkpoint.pt")["server_state"]["bank"]
    # the bundle's 32-float tokens, 4 per image: the server's bank holds keys of the sites' form
    assert bank["keys"].shape[1] == (32 if bank_keys == "mean" else 4 * 32)
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


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    from omnifm_monai.fl.bundle import check_overrides
    from omnifm_monai.fl.engine import make_strategy
    from omnifm_monai.fl.simulator import _site_list

    for bad in ({"rounds": 0}, {"rounds": -1}, {"local_epochs": 0}, {"min_sites": 0}, {"rounds": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            simulate(BUNDLE, "fedavg", output=str(tmp_path / "run"), **{"rounds": 1, **bad})
    with pytest.raises(ValueError, match="batch_sise"):
        simulate(BUNDLE, "fedavg", rounds=1, output=str(tmp_path / "run"), overrides={"batch_sise": 4})
    assert not (tmp_path / "run").exists()
    assert _site_list("icbm_t1") == ["icbm_t1"] and _site_list("a, b,") == ["a", "b"]
    assert _site_list(["a"]) == ["a"] and _site_list({"a": "x"}) == {"a": "x"}
    # ids of the bundle, arguments of its components (either separator), evaluate.json's ids
    check_overrides(
        BUNDLE,
        {
            "batch_size": 4,
            "network_def#private_norms": False,
            "network_def::use_gskr": False,
            "loss#spread_weight": 0,
        },
    )
    for typo in ("network_def#private_normz", "loss#spread_wieght", "learning_rat"):
        with pytest.raises(ValueError, match=typo):
            check_overrides(BUNDLE, {typo: 1})
    with pytest.raises(ValueError, match="muu"):
        make_strategy(BUNDLE, "fedprox", ["a"], {"muu": 0.1})
    assert make_strategy(BUNDLE, "fedprox", ["a"], {"mu": 0.1})[0].mu == 0.1


def test_the_command_line_refuses_an_unknown_flag_before_running(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "omnifm_monai.fl", "simulate", BUNDLE, "--roundz", "3", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "--roundz" in proc.stderr and not out.exists()
    # a refused setting: one line naming it, no traceback, nothing written
    refused = (
        (["--rounds", "0"], "rounds"),
        (["--strategy", "fedavgg", "--sites", "a"], "fedavgg"),
        (["--reference_dir", str(tmp_path / "none")], "no site under"),
    )
    for flags, named in refused:
        proc = subprocess.run(
            [sys.executable, "-m", "omnifm_monai.fl", "simulate", BUNDLE, *flags, "--output", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().startswith("error:") and named in proc.stderr and not out.exists()
    from omnifm_monai.cli import unknown_flags
    from omnifm_monai.fl.__main__ import COMMANDS

    assert unknown_flags(COMMANDS, ["simulate", "b", "--rounds", "2", "--notest", "--sites=a,b"]) == []


def _broken_copy(reference_sites, tmp_path, split):
    """A copy of a reference site with the first image of ``split`` truncated."""
    import shutil

    bad = tmp_path / "data" / f"broken_{split}"
    shutil.copytree(reference_sites / "icbm_t2w", bad)
    image = bad / json.loads((bad / "segmentation.json").read_text())[split][0]["image"]
    return bad, image


def test_a_site_whose_data_fails_validation_is_left_out_and_the_others_go_on(
    reference_sites, tmp_path, caplog
):
    import logging

    bad, image = _broken_copy(reference_sites, tmp_path, "training")
    image.write_bytes(image.read_bytes()[:100])
    sites = {"icbm_t1": str(reference_sites / "icbm_t1"), "broken": str(bad)}
    with caplog.at_level(logging.ERROR, logger="omnifm_monai.fl"):
        results = simulate(
            BUNDLE, "fedavg", rounds=1, output=str(tmp_path / "run"), sites=sites, overrides=SMALL
        )
    assert set(results) == {"icbm_t1"} and (tmp_path / "run" / "global_model.pt").is_file()
    line = next(r.getMessage() for r in caplog.records if "broken" in r.getMessage())
    assert "left out" in line and image.name in line and "\n" not in line  # one line naming the file
    with pytest.raises(RuntimeError, match="min_sites=2"):
        simulate(
            BUNDLE,
            "fedavg",
            rounds=1,
            output=str(tmp_path / "run2"),
            sites=sites,
            overrides=SMALL,
            min_sites=2,
        )


def test_a_site_that_breaks_before_the_test_phase_loses_only_its_own_test_metrics(reference_sites, tmp_path):
    bad, image = _broken_copy(reference_sites, tmp_path, "test")
    sites = {"icbm_t1": str(reference_sites / "icbm_t1"), "broken": str(bad)}
    simulate(
        BUNDLE, "fedavg", rounds=1, output=str(tmp_path / "run"), sites=sites, overrides=SMALL, test=False
    )
    image.write_bytes(image.read_bytes()[:100])  # broken after training
    results = simulate(BUNDLE, "fedavg", rounds=1, output=str(tmp_path / "run"), sites=sites, overrides=SMALL)
    assert set(results) == {"icbm_t1"} and (tmp_path / "run" / "global_model.pt").is_file()


class _OptimizerLog(STRATEGIES["fedbn"]):
    """FedBN that records, per round and site, the optimiser state a round starts from and the state the site
    kept at the end of the round."""

    start: list[tuple[str, dict]] = []
    kept: list[tuple[str, dict]] = []
    private: set[str] = set()

    def before_training(self, ctx):
        names = {p: n for n, p in ctx.network.named_parameters()}
        state = ctx.trainer.optimizer.state
        self.start.append((ctx.site, {names[p]: s["exp_avg"].clone() for p, s in state.items()}))
        _OptimizerLog.private = {n for n in names.values() if n in ctx.private_keys}

    def after_training(self, ctx):
        self.kept.append(
            (ctx.site, {n: s["exp_avg"].clone() for n, s in ctx.state.get("optimizer", {}).items()})
        )


@pytest.mark.parametrize("keep", [False, True])
def test_private_parameters_keep_their_optimiser_state_across_rounds_when_asked(
    reference_sites, tmp_path, keep
):
    _OptimizerLog.start, _OptimizerLog.kept = [], []
    options = {"keep_private_optimizer_state": True} if keep else {}
    _run(tmp_path / "run", reference_sites, _OptimizerLog(**options), rounds=2)
    first, second = _OptimizerLog.start[:2], _OptimizerLog.start[2:]
    assert [site for site, _ in _OptimizerLog.start] == SITES * 2
    assert all(state == {} for _, state in first)  # round 1 always starts fresh
    if not keep:  # every round starts from a fresh optimiser, and nothing is kept
        assert all(state == {} for _, state in second) and all(k == {} for _, k in _OptimizerLog.kept)
        return
    assert _OptimizerLog.private  # FedBN's normalisation parameters
    for (site, start), (kept_site, kept) in zip(second, _OptimizerLog.kept[:2], strict=True):
        assert site == kept_site
        # exactly the site's private parameters resume, with the moments it left there
        assert set(start) == set(kept) == _OptimizerLog.private
        assert all(torch.equal(start[n], kept[n]) for n in start)
    # each site resumes its own moments, not another site's
    (_, a), (_, b) = second
    assert any(not torch.equal(a[n], b[n]) for n in a)
    # the kept state is part of the checkpoint, so a resumed run continues from it
    sites = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["sites"]
    assert all(set(sites[s]["client_state"]["optimizer"]) == set(dict(second)[s]) for s in SITES)
