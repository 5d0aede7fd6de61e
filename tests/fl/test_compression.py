"""Update compression: codec round trips within their bounds, integer tensors and ``none`` exact, the encoded
payload's size, the server's rejection of non-finite updates, and a simulated round with int8 uploads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from omnifm_monai.fl import engine, simulate
from omnifm_monai.fl.compression import (
    BLOCK_SIZE,
    EncodedUpdate,
    decode,
    decode_update,
    encode,
    encode_update,
    error_bound,
    to_diff,
)
from omnifm_monai.fl.engine import aggregate_round, update_bytes
from omnifm_monai.fl.simulator import load_checkpoint
from omnifm_monai.fl.strategies import ClientUpdate, get_strategy

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = str(ROOT / "bundles" / "omnifm_segmentation")
SITES = ["icbm_t1", "icbm_t2w"]


def _weights(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Float tensors of awkward sizes (a scalar, one shorter than a block, one not a multiple of it, wide ranges
    within a block) and the integer and boolean buffers networks carry."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(7, 50, generator=g) * torch.logspace(-6, 1, 50)
    return {
        "conv.weight": scale * torch.randn(16, 3, 3, 3, generator=g),
        "bias": scale * torch.randn(5, generator=g),
        "scalar": torch.tensor(scale * 0.37),
        "wide": scale * wide,
        "zeros": torch.zeros(300),
        "double": scale * torch.randn(130, generator=g, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(12345, dtype=torch.long),
        "mask": torch.rand(9, generator=g) > 0.5,
    }


def _numeric(seed: int) -> dict[str, torch.Tensor]:
    """:func:`_weights` without the boolean (a difference of booleans is refused)."""
    return {k: v for k, v in _weights(seed).items() if v.dtype != torch.bool}


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_round_trip_is_within_the_codecs_bound(codec):
    for seed, scale in [(0, 1.0), (1, 1e-4), (2, 30.0)]:
        weights = _weights(seed, scale)
        restored = decode(*encode(weights, codec))
        assert list(restored) == list(weights)
        for name, value in weights.items():
            out = restored[name]
            assert out.dtype == value.dtype and out.shape == value.shape, name
            if not value.is_floating_point():
                assert torch.equal(out, value), name
                continue
            error = (out.double() - value.double()).abs()
            assert (error <= error_bound(value, codec)).all(), (codec, name, scale)
    # the bounds are the codecs' own: fp16 relative 2**-11; int8 half a step of the block's absmax / 127
    x = torch.tensor([1.0, -0.5, 1e-3, 3.0e-7])
    assert torch.allclose(error_bound(x, "fp16"), x.double().abs() * 2.0**-11 + 2.0**-25)
    blocks = torch.cat([torch.full((BLOCK_SIZE,), 0.5), torch.full((10,), -2.0)])
    blocks[3] = 1.0
    bound = error_bound(blocks, "int8")
    assert bound[0] == pytest.approx(1.0 / 254, rel=1e-3) and bound[-1] == pytest.approx(2.0 / 254, rel=1e-3)


def test_int8_uses_its_levels_and_keeps_block_extremes_exact():
    x = torch.linspace(-3.0, 1.0, 2 * BLOCK_SIZE + 7)
    values, scales, dtypes = encode({"x": x}, "int8")
    q = values["x"]
    assert q.dtype == torch.int8 and q.shape == x.shape and dtypes == {"x": "float32"}
    assert scales["x"].shape == (3,) and scales["x"].dtype == torch.float32
    assert q.abs().max() == 127 and len(q.unique()) > 100  # the full range of levels is used
    restored = decode(values, scales, dtypes)["x"]
    assert restored[0] == x[0]  # a block's absmax is represented exactly


def test_none_is_the_update_itself_and_integers_pass_unchanged():
    update = ClientUpdate("a", _weights(0), 10, extra={"k": torch.ones(2)})
    assert encode_update(update, _weights(1), "none") is update
    assert decode_update(update) is update
    values, scales, dtypes = encode(_weights(0), "none")
    assert not scales and not dtypes and all(torch.equal(values[k], v) for k, v in _weights(0).items())
    assert values["mask"].dtype == torch.bool and encode(_weights(0), "int8")[0]["mask"].dtype == torch.bool
    no_bool = {k: v for k, v in _weights(1).items() if v.dtype != torch.bool}
    update.weights.pop("mask")
    encoded = encode_update(update, no_bool, "int8")
    assert encoded.values["bn.num_batches_tracked"].dtype == torch.long
    assert encoded.extra is update.extra  # strategy extras travel unchanged


@pytest.mark.parametrize("codec", ["fp16", "int8"])
@pytest.mark.parametrize("weight_type", ["full", "diff"])
def test_the_server_rebuilds_the_sites_weights_from_the_encoded_difference(codec, weight_type):
    """Full or diff, an encoded update decodes to the site's difference to the global weights within the codec's
    bound of that difference (not of the weights), so the rebuilt local weights are closer than the weights'."""
    global_weights = {
        k: v for k, v in _weights(0).items() if v.dtype != torch.bool
    }  # no difference of booleans
    local = {
        k: v + 0.01 * _weights(1)[k] if v.is_floating_point() else v + 3 for k, v in global_weights.items()
    }
    sent = ClientUpdate("a", local, 10)
    if weight_type == "diff":  # as a site with send_weight_diff sends it
        sent = to_diff(sent, global_weights)
    assert sent.weight_type == weight_type
    upload = encode_update(sent, global_weights, codec)
    assert isinstance(upload, EncodedUpdate)
    received = decode_update(upload)
    assert received.weight_type == "diff" and received.num_samples == 10 and received.site == "a"
    rebuilt = received.full_weights(global_weights)
    diff = to_diff(ClientUpdate("a", local, 10), global_weights).weights
    for k, v in local.items():
        assert rebuilt[k].dtype == v.dtype
        if not v.is_floating_point():
            assert torch.equal(rebuilt[k], v), k
            continue
        # the bound of the difference, plus float rounding of global + difference
        tolerance = error_bound(diff[k], codec) + v.double().abs() * 2.0**-23 + 1e-30
        assert ((rebuilt[k].double() - v.double()).abs() <= tolerance).all(), k
    # quantising the difference loses far less than quantising the weights themselves
    direct = decode(*encode(local, codec))
    assert (rebuilt["conv.weight"] - local["conv.weight"]).abs().max() < (
        direct["conv.weight"] - local["conv.weight"]
    ).abs().max()


def test_encoded_upload_bytes_are_half_and_a_quarter_of_float32():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(256, 512, generator=g), "b": torch.randn(1000, generator=g)}
    global_weights = {k: torch.zeros_like(v) for k, v in weights.items()}
    update = ClientUpdate("a", weights, 10)
    plain = update_bytes(update)
    fp16 = update_bytes(encode_update(update, global_weights, "fp16")) / plain
    int8 = update_bytes(encode_update(update, global_weights, "int8")) / plain
    # fp16: 2 of 4 bytes; int8: 1 of 4 bytes and a 4-byte scale per block of 128
    assert 0.49 < fp16 < 0.51
    assert 0.25 < int8 < 0.25 + 1 / BLOCK_SIZE + 0.01


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_a_non_finite_update_stays_non_finite_and_is_rejected(codec):
    global_weights = _numeric(0)
    good = ClientUpdate("a", _numeric(1), 10)
    for bad_value in (float("nan"), float("inf")):
        bad = _numeric(2)
        bad["conv.weight"][0, 0, 0, 0] = bad_value
        if codec == "fp16":
            bad["bias"][0] = 1e6  # beyond fp16's range
        uploads = [encode_update(u, global_weights, codec) for u in (good, ClientUpdate("b", bad, 10))]
        received = [decode_update(u) for u in uploads]
        _, _, rejected = aggregate_round(get_strategy("fedavg"), global_weights, received, {})
        assert set(rejected) == {"b"}


def test_bad_arguments_are_refused_with_the_rule():
    with pytest.raises(ValueError, match="compression must be one of"):
        encode({"x": torch.ones(2)}, "int4")
    with pytest.raises(ValueError, match="block_size"):
        encode({"x": torch.ones(2)}, "int8", block_size=0)
    with pytest.raises(ValueError, match="no matching global weight"):
        to_diff(ClientUpdate("a", {"x": torch.ones(2)}, 1), {"x": torch.ones(3)})
    with pytest.raises(ValueError, match="compression must be one of"):
        simulate(BUNDLE, "fedavg", rounds=1, output="unused", compression="zip")


# ------------------------------------------------------------------------------------------ slow: a simulated round
def _uploads(out: Path) -> list[float]:
    with open(out / "metrics.csv") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "upload_bytes"]


@pytest.mark.slow
def test_simulated_round_with_int8_uploads(reference_sites, tmp_path, monkeypatch):
    """2 sites, 1 round: int8 uploads are about a quarter of the uncompressed ones, and the global model differs
    from the uncompressed run's by at most the codec's bound on the sites' differences (both runs train the same
    local models; only what is uploaded differs). A resume with another codec is refused."""
    sites = {s: str(reference_sites / s) for s in SITES}
    args = dict(
        rounds=1, sites=sites, overrides={"image_size": 32, "batch_size": 8}, test=False, figures=False
    )
    simulate(BUNDLE, "fedavg", output=str(tmp_path / "none"), **args)
    diffs = []

    def recording(update, global_weights, codec, *rest):
        diffs.append(to_diff(update, global_weights).weights)
        return encode_update(update, global_weights, codec, *rest)

    monkeypatch.setattr(engine, "encode_update", recording)
    simulate(BUNDLE, "fedavg", output=str(tmp_path / "int8"), compression="int8", **args)
    assert len(diffs) == 2
    plain, compressed = _uploads(tmp_path / "none"), _uploads(tmp_path / "int8")
    assert len(plain) == len(compressed) == 2
    assert all(0.2 < c / p < 0.35 for c, p in zip(compressed, plain, strict=True))
    expected = load_checkpoint(tmp_path / "none" / "checkpoint.pt")["global_weights"]
    weights = load_checkpoint(tmp_path / "int8" / "checkpoint.pt")["global_weights"]
    assert set(weights) == set(expected)
    moved = False
    for k, v in expected.items():
        if not v.is_floating_point():
            assert torch.equal(weights[k], v), k
            continue
        # a weighted mean of the sites' decoded differences: within the larger of their bounds (and float rounding)
        bound = torch.maximum(*(error_bound(d[k], "int8") for d in diffs)) + v.double().abs() * 2.0**-22
        assert ((weights[k].double() - v.double()).abs() <= bound).all(), k
        moved |= not torch.equal(weights[k], v)
    assert moved  # the codec did change something
    assert json.loads((tmp_path / "int8" / "run.json").read_text())["compression"] == "int8"
    with pytest.raises(ValueError, match="another configuration"):
        simulate(BUNDLE, "fedavg", output=str(tmp_path / "int8"), compression="fp16", **{**args, "rounds": 2})
