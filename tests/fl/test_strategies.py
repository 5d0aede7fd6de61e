import logging

import pytest
import torch
from monai.networks.nets import ResNet

from omnifm_monai.fl.engine import aggregate_round
from omnifm_monai.fl.strategies import (
    STRATEGIES,
    ClientUpdate,
    get_strategy,
    head_keys,
    norm_keys,
    weighted_average,
)
from omnifm_monai.networks import OmniFMResNet
from omnifm_monai.networks.blocks import kmeans_centroids


def _weights(seed, shapes=(("w", (3, 2)), ("b", (2,)))):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) for k, s in shapes}


def _updates(n=3):
    return [ClientUpdate(f"s{i}", _weights(i), num_samples=10 * (i + 1)) for i in range(n)]


def test_weighted_average_matches_reference_and_rounds_integers():
    ws = [
        {"x": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
        {"x": torch.tensor([3.0, 6.0]), "n": torch.tensor(6)},
    ]
    avg = weighted_average(ws, [1, 3])
    assert torch.allclose(avg["x"], torch.tensor([2.5, 5.0]))
    assert avg["n"].dtype == torch.int64 and int(avg["n"]) == 5  # 3*0.25 + 6*0.75 = 5.25


def test_fedavg_averages_batchnorm_statistics():
    nets = [
        ResNet("basic", [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=2, n_input_channels=1, num_classes=2)
        for _ in range(2)
    ]
    for i, net in enumerate(nets):
        net.train()(torch.rand(4, 1, 32, 32) * (i + 1))  # different running statistics
    states = [{k: v.clone() for k, v in n.state_dict().items()} for n in nets]
    new, _ = get_strategy("fedavg").aggregate(
        states[0], [ClientUpdate(str(i), s, 5) for i, s in enumerate(states)], {}
    )
    assert torch.allclose(
        new["bn1.running_mean"], (states[0]["bn1.running_mean"] + states[1]["bn1.running_mean"]) / 2
    )
    assert torch.allclose(
        new["bn1.running_var"], (states[0]["bn1.running_var"] + states[1]["bn1.running_var"]) / 2
    )


def test_diff_updates_give_the_same_global_as_full_updates():
    global_w = _weights(100)
    full = _updates()
    diff = [
        ClientUpdate(u.site, {k: v - global_w[k] for k, v in u.weights.items()}, u.num_samples, "diff")
        for u in full
    ]
    a, _ = get_strategy("fedavg").aggregate(global_w, full, {})
    b, _ = get_strategy("fedavg").aggregate(global_w, diff, {})
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6)


def test_invalid_updates_are_rejected_and_the_round_goes_on(caplog):
    global_w = _weights(100)
    good = _updates(2)
    bad = [
        ClientUpdate("nan", {**_weights(5), "w": torch.full((3, 2), float("nan"))}, 10),
        ClientUpdate("shape", {**_weights(6), "b": torch.zeros(3)}, 10),
        ClientUpdate("unknown", {**_weights(7), "extra": torch.zeros(1)}, 10),
        ClientUpdate("empty", _weights(8), 0),
        ClientUpdate("int", {**_weights(9), "w": torch.ones(3, 2, dtype=torch.int64)}, 10),
        ClientUpdate("bool", {**_weights(10), "w": torch.ones(3, 2, dtype=torch.bool)}, 10),
    ]
    with caplog.at_level(logging.WARNING):
        new, _, rejected = aggregate_round(get_strategy("fedavg"), global_w, good + bad, {})
    assert set(rejected) == {"nan", "shape", "unknown", "empty", "int", "bool"}
    assert "dtype" in rejected["int"] and "dtype" in rejected["bool"]
    assert "NaN" in rejected["nan"] and "shape" in rejected["shape"] and "unknown" in rejected["unknown"]
    assert all(site in caplog.text for site in rejected)
    expected = weighted_average([u.weights for u in good], [u.num_samples for u in good])
    assert all(torch.allclose(new[k], expected[k]) for k in new)
    with pytest.raises(RuntimeError, match="valid updates"):
        aggregate_round(get_strategy("fedavg"), global_w, bad, {}, min_updates=1)


def test_server_optimisers_follow_their_update_rules():
    w = {"p": torch.tensor([1.0, -2.0])}
    ups = [
        ClientUpdate("a", {"p": torch.tensor([2.0, -1.0])}, 1),
        ClientUpdate("b", {"p": torch.tensor([0.0, -1.0])}, 1),
    ]
    delta = torch.tensor([0.0, 1.0])  # mean - w
    s = get_strategy("fedavgm", server_lr=0.5, momentum=0.9)
    new, state = s.aggregate(w, ups, s.init_state(w))
    assert torch.allclose(new["p"], w["p"] + 0.5 * delta)
    new2, _ = s.aggregate(new, [ClientUpdate("a", {"p": new["p"] + 1}, 1)], state)
    assert torch.allclose(new2["p"], new["p"] + 0.5 * (0.9 * delta + 1))
    a = get_strategy("fedadam", server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    new, st = a.aggregate(w, ups, a.init_state(w))
    m, v = 0.1 * delta, 0.01 * delta**2
    assert torch.allclose(new["p"], w["p"] + 0.1 * m / (v.sqrt() + 1e-3))
    y = get_strategy("fedyogi", server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    _, sty = y.aggregate(w, ups, y.init_state(w))
    assert torch.allclose(sty["v"]["p"], -(1 - 0.99) * delta**2 * torch.sign(-(delta**2)))


def test_scaffold_and_feddyn_server_state():
    w = {"p": torch.zeros(2)}
    ups = [
        ClientUpdate(
            "a", {"p": torch.tensor([1.0, 1.0])}, 1, extra={"control_delta": {"p": torch.tensor([1.0, 0.0])}}
        ),
        ClientUpdate(
            "b", {"p": torch.tensor([3.0, 1.0])}, 1, extra={"control_delta": {"p": torch.tensor([3.0, 2.0])}}
        ),
    ]
    s = get_strategy("scaffold", num_sites=4)
    new, state = s.aggregate(w, ups, s.init_state(w))
    assert torch.allclose(new["p"], torch.tensor([2.0, 1.0]))
    assert torch.allclose(state["control"]["p"], 0.5 * torch.tensor([2.0, 1.0]))  # |S|/N = 2/4
    d = get_strategy("feddyn", alpha=0.5, num_sites=2)
    new, state = d.aggregate(w, ups, d.init_state(w))
    h = -0.5 * (torch.tensor([1.0, 1.0]) + torch.tensor([3.0, 1.0])) / 2
    assert torch.allclose(state["h"]["p"], h)
    assert torch.allclose(new["p"], torch.tensor([2.0, 1.0]) - h / 0.5)


def _omnifm_net():
    return OmniFMResNet(
        2,
        1,
        3,
        channels=(8, 16, 16, 16),
        spectral_dim=16,
        tokenizer_grid=8,
        bank_capacity=12,
        modalities=["T1", "T2", "CT"],
    )


def test_private_keys_per_strategy():
    net = _omnifm_net()
    keys = set(net.state_dict())
    base = get_strategy("fedavg").private_keys(net)
    assert base == {k for k in keys if k.startswith("bank.") or "private_" in k}
    assert norm_keys(net) <= get_strategy("fedbn").private_keys(net)
    assert any("bn1" in k for k in norm_keys(net)) and any("running_mean" in k for k in norm_keys(net))
    assert head_keys(net) == {"backbone.fc.weight", "backbone.fc.bias"}
    assert head_keys(net) <= get_strategy("fedper").private_keys(net) and head_keys(net) <= get_strategy(
        "fedrep"
    ).private_keys(net)
    assert get_strategy("local").private_keys(net) == keys


def test_omnifm_bank_merge_holds_each_sites_centroids_within_quota():
    net = _omnifm_net()
    s = get_strategy(
        "omnifm", sites=["a", "b", "c"], embed_dim=16, capacity=12, modalities=["T1", "T2", "CT"]
    )
    w = {k: v for k, v in net.state_dict().items() if k not in s.private_keys(net)}
    state = s.init_state(w)
    ups = []
    for i, (site, modality) in enumerate([("a", "T1"), ("b", "T1"), ("c", "CT")]):
        keys = kmeans_centroids(torch.randn(40, 16, generator=torch.Generator().manual_seed(i)), 6)
        ups.append(
            ClientUpdate(
                site, w, 5, extra={"bank_keys": keys, "modality": modality, "bank_hits": torch.zeros(0)}
            )
        )
    _, state = s.aggregate(w, ups, state)
    bank = state["bank"]
    assert len(bank["keys"]) == 12
    assert int((bank["modality"] == 2).sum()) == 6  # CT (under its quota of 6) keeps everything it sent
    assert int((bank["modality"] == 0).sum()) == 6  # T1 pruned to its quota
    assert set(bank["site"].tolist()) == {0, 1, 2}
    # next round: hits reported by clients decide which T1 entries survive
    hits = torch.zeros(12)
    favoured = int((bank["site"] == 1).nonzero()[0])
    hits[favoured] = 50
    ups2 = [
        ClientUpdate(
            "a", w, 5, extra={"bank_keys": ups[0].extra["bank_keys"], "modality": "T1", "bank_hits": hits}
        )
    ]
    _, state2 = s.aggregate(w, ups2, state)
    assert len(state2["bank"]["keys"]) == 12


def test_every_strategy_is_registered_with_a_documented_rule():
    expected = {
        "local",
        "centralized",
        "fedavg",
        "fedprox",
        "fedbn",
        "fedper",
        "fedrep",
        "ditto",
        "scaffold",
        "feddyn",
        "moon",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "feddg",
        "harmofl",
        "omnifm",
    }
    assert set(STRATEGIES) == expected
    for cls in STRATEGIES.values():
        assert cls.__doc__ and ("(" in cls.__doc__ or cls.name in ("local", "centralized", "omnifm"))
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("fedsgd")


def test_omnifm_site_hooks_load_the_servers_bank_and_can_exclude_the_sites_own_entries():
    """The client hooks alone, without an engine: a SiteContext around an OmniFM network."""
    from types import SimpleNamespace

    from omnifm_monai.fl.strategies import SiteContext

    net = OmniFMResNet(
        2,
        1,
        3,
        channels=(8, 16, 16, 16),
        spectral_dim=16,
        tokenizer_grid=8,
        bank_capacity=12,
        top_k=3,
        modalities=["T1", "T2", "CT"],
        exclude_own_site=True,
    )
    s = get_strategy("omnifm", sites=["a", "b"], **net.bank.settings())
    w = {k: v for k, v in net.state_dict().items() if k not in s.private_keys(net)}
    ups = [
        ClientUpdate(
            site,
            w,
            5,
            extra={
                "bank_keys": kmeans_centroids(
                    torch.randn(20, 16, generator=torch.Generator().manual_seed(i)), 4
                ),
                "modality": m,
                "bank_hits": torch.zeros(0),
            },
        )
        for i, (site, m) in enumerate([("a", "T1"), ("b", "T2")])
    ]
    _, state = s.aggregate(w, ups, s.init_state(w))
    ctx = SiteContext(
        site="a",
        network=net,
        trainer=SimpleNamespace(state=SimpleNamespace(device="cpu")),
        workflow=SimpleNamespace(bank_dataloader=[{"image": torch.rand(8, 1, 32, 32)}]),
        private_keys=s.private_keys(net),
        payload=s.server_payload(state),
    )
    s.setup_site(ctx)
    s.before_training(ctx)
    assert net.bank.federated  # the standalone SpectralBankRefresh stands down
    assert torch.equal(net.bank.to_tensors()["keys"], state["bank"]["keys"])
    _, idx = net.bank.retrieve(torch.randn(5, 16))
    assert idx.numel() == 15 and set(net.bank.site[idx.flatten()].tolist()) == {1}  # only site b's entries
    net.bank.exclude_own_site = False
    _, idx = net.bank.retrieve(torch.randn(50, 16))
    assert 0 in set(net.bank.site[idx.flatten()].tolist())


def test_baselines_train_the_plain_backbone_omnifm_its_parts():
    from omnifm_monai.networks import OmniFMUNet

    parts = get_strategy("fedavg").network_overrides(OmniFMUNet)
    assert parts == {f"network_def::{p}": False for p in OmniFMUNet.PARTS}
    assert get_strategy("omnifm").network_overrides(OmniFMUNet) == {}
    assert get_strategy("fedprox").network_overrides(torch.nn.Linear) == {}  # a network without switches


def test_a_strategy_is_found_by_its_dotted_path():
    from omnifm_monai.fl.strategies import FedProx, strategy_class

    assert strategy_class("omnifm_monai.fl.strategies.fedprox.FedProx") is FedProx
    with pytest.raises(ValueError, match="not a Strategy"):
        strategy_class("torch.nn.Linear")
    with pytest.raises(ValueError, match="cannot import"):
        strategy_class("no_such_package.Strategy")


def test_harmofl_step_takes_the_gradient_at_the_perturbed_weights():
    """WPOpt: after the hook, the gradient is the loss gradient at ``w + rho g / ||g||``, and ``w`` is unchanged."""
    from types import SimpleNamespace

    from omnifm_monai.fl.strategies import SiteContext

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    loss_fn = torch.nn.MSELoss()
    loss_fn(net(x), y).backward()
    w0 = [p.detach().clone() for p in net.parameters()]
    g = [p.grad.detach().clone() for p in net.parameters()]
    engine = SimpleNamespace(
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), prepare_batch=lambda b, *a, **k: b, non_blocking=False,
        to_kwargs={}, inferer=lambda inputs, network: network(inputs), loss_function=loss_fn, network=net,
        state=SimpleNamespace(batch=(x, y), device="cpu"),
    )  # fmt: skip
    ctx = SiteContext(site="a", network=net, trainer=None, workflow=None, private_keys=set())
    get_strategy("harmofl", rho=0.5)._perturbed_gradient(ctx, engine)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    reference = torch.nn.Linear(3, 1)
    with torch.no_grad():
        for p, w, gi in zip(reference.parameters(), w0, g, strict=True):
            p.copy_(w + 0.5 * gi / norm)
    loss_fn(reference(x), y).backward()
    for p, r, w in zip(net.parameters(), reference.parameters(), w0, strict=True):
        assert torch.allclose(p.grad, r.grad, atol=1e-6) and torch.equal(p.detach(), w)


def test_harmofl_normalises_a_metatensor_batch_that_postprocessing_can_still_extend():
    """The pre-hook replaces each image's low-frequency amplitude by the site's mean and keeps the batch a
    MetaTensor whose transforms can still be tracked (the super-resolution evaluator's ``Lambdad``)."""
    from types import SimpleNamespace

    from monai.data import MetaTensor, decollate_batch, list_data_collate
    from monai.transforms import Flip, Lambdad

    from omnifm_monai.fl.strategies import SiteContext
    from omnifm_monai.transforms import AmplitudeNormalize, amplitude_bank

    torch.manual_seed(0)
    items = [{"image": Flip(0)(MetaTensor(torch.rand(1, 16, 16) * (i + 1)))} for i in range(4)]  # tracked
    batch = list_data_collate(items)
    net = torch.nn.Identity()
    trainer = SimpleNamespace(add_event_handler=lambda *a, **k: None, data_loader=[batch])
    ctx = SiteContext(
        site="a",
        network=net,
        trainer=trainer,
        workflow=SimpleNamespace(bank_dataloader=[batch]),
        private_keys=set(),
    )
    strategy = get_strategy("harmofl", beta=0.2)
    strategy.setup_site(ctx)
    strategy.prepare_evaluation(ctx, {})
    out = net(batch["image"])
    mean = torch.as_tensor(amplitude_bank([x for x in batch["image"]])).mean(0)
    expected = torch.stack([AmplitudeNormalize(mean, beta=0.2)(x) for x in batch["image"].as_tensor()])
    assert torch.allclose(out.as_tensor(), expected)
    assert not torch.allclose(out.as_tensor(), batch["image"].as_tensor())
    for item in decollate_batch({"pred": out}):
        Lambdad(keys="pred", func=lambda x: x * 2)(item)  # failed with a stacked MetaTensor batch


def _omnifm_site(site, net, strategy, images, payload=None):
    from types import SimpleNamespace

    from omnifm_monai.fl.strategies import SiteContext

    return SiteContext(
        site=site,
        network=net,
        trainer=SimpleNamespace(state=SimpleNamespace(device="cpu")),
        workflow=SimpleNamespace(bank_dataloader=[{"image": images}], datalist_meta={"modality": "T1"}),
        private_keys=strategy.private_keys(net),
        payload=payload or {},
    )


def test_omnifm_uploads_keys_of_the_aggregated_tokenizer_and_onboards_a_new_site_with_the_mean_personal_state():
    from omnifm_monai.handlers import site_centroids

    torch.manual_seed(0)
    net = OmniFMResNet(
        2, 1, 3, channels=(8, 16, 16, 16), spectral_dim=16, tokenizer_grid=8, modalities=["T1"]
    )
    s = get_strategy("omnifm", sites=["a", "b"], num_centroids=4, **net.bank.settings())
    images = torch.rand(16, 1, 32, 32)
    ctx = _omnifm_site("a", net, s, images)
    s.setup_site(ctx)
    s.before_training(ctx)  # the global (aggregated) tokenizer is loaded
    expected = site_centroids(net, [{"image": images}], 4, min_images_per_centroid=4)
    with torch.no_grad():  # local training moves the tokenizer; the uploaded keys stay the aggregated one's
        net.tokenizer.filter.mul_(3.0)
        net.private_gate.alpha.fill_(0.7)
    extra = s.upload(ctx, {}, 1)
    assert torch.equal(extra["bank_keys"], expected) and extra["bank_keys"].shape[0] <= 16 // 4
    assert set(extra["personal"]) == {k for k in s.private_keys(net) if not k.startswith("bank.")}
    other = {k: v + 1 for k, v in extra["personal"].items()}
    shared = {k: v for k, v in net.state_dict().items() if k not in s.private_keys(net)}
    ups = [
        ClientUpdate("a", shared, 30, extra=extra),
        ClientUpdate("b", shared, 10, extra={**extra, "personal": other}),
    ]
    _, state = s.aggregate(shared, ups, s.init_state(shared))
    mean = state["onboarding"]
    assert torch.allclose(mean["private_gate.alpha"], torch.tensor([0.7 + 0.25]))
    # a site that never trained evaluates with the mean; a trained site keeps its own
    fresh = OmniFMResNet(
        2, 1, 3, channels=(8, 16, 16, 16), spectral_dim=16, tokenizer_grid=8, modalities=["T1"]
    )
    s.prepare_evaluation(_omnifm_site("new", fresh, s, images), s.server_payload(state))
    assert all(torch.allclose(fresh.state_dict()[k], v) for k, v in mean.items())
    s.prepare_evaluation(ctx, s.server_payload(state))
    assert float(net.private_gate.alpha.detach()) == pytest.approx(0.7)


def test_malformed_or_nan_strategy_extras_reject_one_site_not_the_round():
    """OmniFM's bank keys, SCAFFOLD's control deltas and FedDG's amplitudes are checked per update."""
    w = _weights(100)
    omnifm = get_strategy("omnifm", sites=["a"], embed_dim=4, capacity=16, modalities=["T1", "T2"])
    keys = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    personal = {
        "private_gate.alpha": torch.tensor([0.1]),
        "backbone.bn1.num_batches_tracked": torch.tensor(3),
    }
    good = {"bank_keys": keys, "modality": "T1", "bank_hits": torch.zeros(0), "personal": personal}
    cases = {
        "nan": {**good, "bank_keys": torch.full((3, 4), float("nan"))},
        "shape": {**good, "bank_keys": torch.zeros(3, 5)},
        "modality": {**good, "modality": "PET"},
        "not_a_tensor": {**good, "bank_keys": [[0.0] * 4]},
        "personal": {**good, "personal": {"private_gate.alpha": torch.tensor([float("inf")])}},
    }
    updates = [ClientUpdate("a", _weights(1), 10, extra=good)]
    updates += [ClientUpdate(site, _weights(2), 10, extra=extra) for site, extra in cases.items()]
    _, state, rejected = aggregate_round(omnifm, w, updates, omnifm.init_state(w))
    assert set(rejected) == set(cases), rejected
    assert torch.isfinite(state["bank"]["keys"]).all() and len(state["bank"]["keys"]) == 3
    assert state["onboarding"]["backbone.bn1.num_batches_tracked"] == 3  # integer counters pass and average

    scaffold = get_strategy("scaffold", num_sites=2)
    state = scaffold.init_state(w)
    delta = {k: torch.zeros_like(v) for k, v in state["control"].items()}
    bad = {**delta, "w": torch.full_like(delta["w"], float("nan"))}
    ups = [
        ClientUpdate("good", _weights(1), 10, extra={"control_delta": delta}),
        ClientUpdate("nan", _weights(2), 10, extra={"control_delta": bad}),
        ClientUpdate("missing", _weights(3), 10, extra={"control_delta": {"w": delta["w"]}}),
    ]
    _, state, rejected = aggregate_round(scaffold, w, ups, state)
    assert set(rejected) == {"nan", "missing"} and all(
        torch.isfinite(c).all() for c in state["control"].values()
    )

    feddg = get_strategy("feddg")
    ups = [
        ClientUpdate("good", _weights(1), 10, extra={"amplitudes": torch.rand(2, 1, 8, 8)}),
        ClientUpdate("nan", _weights(2), 10, extra={"amplitudes": torch.full((2, 1, 8, 8), float("nan"))}),
    ]
    _, state, rejected = aggregate_round(feddg, w, ups, feddg.init_state(w))
    assert set(rejected) == {"nan"} and set(state["amplitudes"]) == {"good"}
    wrong = [ClientUpdate("wrong", _weights(3), 10, extra={"amplitudes": torch.rand(2, 1, 4, 4)})]
    _, _, rejected = aggregate_round(feddg, w, wrong + ups[:1], state)
    assert set(rejected) == {"wrong"}
