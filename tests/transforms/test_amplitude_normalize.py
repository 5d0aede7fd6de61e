from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from omnifm_monai.spectral import amplitude_phase, low_pass_slices
from omnifm_monai.transforms import (
    AmplitudeNormalize,
    AmplitudeNormalizeD,
    AmplitudeNormalized,
    AmplitudeNormalizeDict,
    amplitude_bank,
)


def _image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _low_pass(shape, beta):
    """``(C, *S)`` booleans: the centred low-pass window of every channel (the project's convention)."""
    inside = np.zeros(shape, bool)
    inside[(slice(None), *low_pass_slices(tuple(shape[1:]), beta))] = True
    return inside


def _reference(shape):
    return amplitude_bank([_image(shape, seed=s) * (1 + s) for s in range(1, 4)]).mean(0)


@pytest.mark.parametrize("shape", [(2, 24, 20), (1, 10, 12, 8)])
@pytest.mark.parametrize("beta", [None, 0.1])
@pytest.mark.parametrize("with_reference", [False, True])
def test_strength_zero_is_identity(shape, beta, with_reference):
    x = _image(shape)
    ref = _reference(shape) if with_reference else None
    out = AmplitudeNormalize(ref, strength=0.0, beta=beta)(torch.as_tensor(x))
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), x, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 24, 20), (1, 10, 12, 8)])
@pytest.mark.parametrize("beta", [None, 0.1])
def test_strength_one_sets_reference_amplitude_and_keeps_phase(shape, beta):
    sd, x, ref = len(shape) - 1, _image(shape), _reference(shape)
    amp_x, pha_x = amplitude_phase(x, sd)
    out = AmplitudeNormalize(ref, strength=1.0, beta=beta)(x)
    assert isinstance(out, np.ndarray) and out.shape == shape
    amp_o, pha_o = amplitude_phase(out, sd)
    inside = np.ones(shape, bool) if beta is None else _low_pass(shape, beta)
    np.testing.assert_allclose(amp_o[inside], ref[inside], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(amp_o[~inside], amp_x[~inside], atol=1e-4)
    keep = amp_o > 1e-3 * amp_o.max()
    np.testing.assert_allclose(np.exp(1j * pha_o)[keep], np.exp(1j * pha_x)[keep], atol=1e-3)
    # geometric interpolation: s = 0.5 gives sqrt(A * A_ref)
    amp_h = amplitude_phase(AmplitudeNormalize(ref, strength=0.5, beta=beta)(x), sd)[0]
    np.testing.assert_allclose(amp_h[inside], np.sqrt(amp_x * ref)[inside], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("beta", [None, 0.2])
def test_default_reference_is_flat_with_same_energy(beta):
    x = _image((2, 20, 20))
    amp_x = amplitude_phase(x, 2)[0]
    amp_o = amplitude_phase(AmplitudeNormalize(beta=beta)(x), 2)[0]
    inside = np.ones(x.shape, bool) if beta is None else _low_pass(x.shape, beta)
    for c in range(2):
        a_in, o_in = amp_x[c][inside[c]], amp_o[c][inside[c]]
        np.testing.assert_allclose(o_in, np.sqrt((a_in**2).mean()), rtol=1e-4)  # flat, per channel
        assert (o_in**2).sum() == pytest.approx((a_in**2).sum(), rel=1e-4)  # same energy


def test_parity_metatensor_and_call_override():
    x, ref = _image((1, 16, 16)), _reference((1, 16, 16))
    t = AmplitudeNormalize(ref, strength=0.7, beta=0.1)
    np.testing.assert_allclose(t(torch.as_tensor(x)).numpy(), t(x), atol=1e-5)
    m = MetaTensor(torch.as_tensor(x), affine=torch.eye(4) * 3, meta={"site": "a"})
    out = t(m)
    assert isinstance(out, MetaTensor) and out.meta["site"] == "a" and torch.equal(out.affine, m.affine)
    np.testing.assert_allclose(AmplitudeNormalize(strength=0.7, beta=0.1)(x, reference_amplitude=ref), t(x))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="strength"):
        AmplitudeNormalize(strength=-0.1)
    with pytest.raises(ValueError, match="beta"):
        AmplitudeNormalize(beta=0.7)
    with pytest.raises(ValueError, match="reference_amplitude"):
        AmplitudeNormalize(np.ones((1, 8, 8)))(_image((1, 16, 16)))


def test_dict_version():
    assert AmplitudeNormalizeD is AmplitudeNormalizeDict is AmplitudeNormalized
    x, ref = _image((1, 16, 16)), _reference((1, 16, 16))
    d = AmplitudeNormalized("image", ref, strength=0.5, beta=0.1)({"image": x, "label": x})
    np.testing.assert_allclose(d["image"], AmplitudeNormalize(ref, 0.5, 0.1)(x))
    assert d["label"] is x
