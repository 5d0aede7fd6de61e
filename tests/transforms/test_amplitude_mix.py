from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from omnifm_monai.spectral import amplitude_phase, low_pass_slices
from omnifm_monai.transforms import (
    AmplitudeMix,
    AmplitudeMixD,
    AmplitudeMixd,
    AmplitudeMixDict,
    RandAmplitudeMix,
    RandAmplitudeMixD,
    RandAmplitudeMixd,
    RandAmplitudeMixDict,
    amplitude_bank,
)

SHAPES = [(2, 32, 24), (1, 12, 16, 10)]


def _image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _low_pass(shape, beta):
    """``(C, *S)`` booleans: the centred low-pass window of every channel (the project's convention)."""
    inside = np.zeros(shape, bool)
    inside[(slice(None), *low_pass_slices(tuple(shape[1:]), beta))] = True
    return inside


def _same_phase(pha_a, pha_b, amp, atol=1e-3):
    """Phases agree (mod 2 pi) wherever the amplitude is not negligible."""
    keep = amp > 1e-3 * amp.max()
    np.testing.assert_allclose(np.exp(1j * pha_a)[keep], np.exp(1j * pha_b)[keep], atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("as_torch", [False, True])
def test_ratio_zero_is_identity(shape, as_torch):
    x, style = _image(shape), _image(shape, seed=1)
    target = amplitude_phase(style, len(shape) - 1)[0]
    img = torch.as_tensor(x) if as_torch else x
    out = AmplitudeMix(beta=0.1, ratio=0.0)(img, target)
    assert type(out) is type(img) and out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_allclose(np.asarray(out), x, atol=1e-5)
    np.testing.assert_allclose(np.asarray(AmplitudeMix(0.1)(img, target, ratio=0.0)), x, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_ratio_one_copies_low_frequency_amplitude_and_keeps_phase(shape):
    sd, beta = len(shape) - 1, 0.1
    x, style = _image(shape), _image(shape, seed=1) * 3.0
    amp_x, pha_x = amplitude_phase(x, sd)
    target = amplitude_phase(style, sd)[0]
    out = AmplitudeMix(beta=beta, ratio=1.0)(x, target)
    amp_o, pha_o = amplitude_phase(out, sd)
    inside = _low_pass(shape, beta)
    np.testing.assert_allclose(amp_o[inside], target[inside], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(amp_o[~inside], amp_x[~inside], atol=1e-4)
    _same_phase(pha_o, pha_x, amp_o)
    # half-way: the linear mix of the two amplitudes
    amp_h = amplitude_phase(AmplitudeMix(beta=beta)(x, target, ratio=0.5), sd)[0]
    np.testing.assert_allclose(amp_h[inside], 0.5 * (amp_x + target)[inside], rtol=1e-4, atol=1e-4)


def test_numpy_torch_parity_broadcast_and_metatensor():
    x, style = _image((3, 24, 24)), _image((1, 24, 24), seed=2)
    target = amplitude_phase(style, 2)[0]  # one channel broadcasts over three
    mix = AmplitudeMix(beta=0.1, ratio=0.7)
    ref = mix(x, target)
    np.testing.assert_allclose(mix(torch.as_tensor(x), torch.as_tensor(target)).numpy(), ref, atol=1e-5)
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0], dtype=torch.float64))
    m = MetaTensor(torch.as_tensor(x), affine=affine, meta={"filename_or_obj": "a.nii"})
    out = mix(m, target)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.nii"
    assert torch.equal(out.affine, affine)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="ratio"):
        AmplitudeMix(ratio=1.5)
    with pytest.raises(ValueError, match="beta"):
        AmplitudeMix(beta=0.0)
    with pytest.raises(ValueError, match=r"\(2, 16, 16\)"):
        AmplitudeMix(0.1)(_image((3, 16, 16)), np.ones((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="ratio_range"):
        RandAmplitudeMix(np.ones((1, 1, 8, 8)), ratio_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="bank"):
        RandAmplitudeMix(np.ones((4, 4)))  # not a stack of spectra


def test_amplitude_bank():
    images = [_image((2, 16, 12), seed=s) for s in range(3)]
    bank = amplitude_bank([images[0], torch.as_tensor(images[1]), images[2]])
    assert isinstance(bank, np.ndarray) and bank.shape == (3, 2, 16, 12) and bank.dtype == np.float32
    np.testing.assert_allclose(bank[1], amplitude_phase(images[1], 2)[0], atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        amplitude_bank([images[0], _image((2, 16, 16))])
    with pytest.raises(ValueError, match="at least one"):
        amplitude_bank([])


def test_rand_amplitude_mix_is_seeded_and_uses_the_bank():
    x = _image((1, 32, 32))
    bank = amplitude_bank([_image((1, 32, 32), seed=s) for s in range(1, 5)])

    def run(seed):
        t = RandAmplitudeMix(bank, beta=0.1, ratio_range=(0.2, 1.0))
        t.set_random_state(seed)
        return t, t(x)

    t, out = run(7)
    np.testing.assert_array_equal(out, run(7)[1])
    assert not np.allclose(out, run(8)[1])
    assert 0 <= t._index < 4 and 0.2 <= t._ratio <= 1.0
    np.testing.assert_allclose(out, AmplitudeMix(0.1)(x, bank[t._index], t._ratio), atol=1e-6)
    # a list of spectra is stacked; prob=0 leaves the image untouched
    assert RandAmplitudeMix(list(bank), beta=0.1).bank.shape == (4, 1, 32, 32)
    assert RandAmplitudeMix(bank, beta=0.1, prob=0.0)(x) is x
    # ratio_range (0, 0): identity whatever the draw
    np.testing.assert_allclose(RandAmplitudeMix(bank, 0.1, ratio_range=(0.0, 0.0))(x), x, atol=1e-5)


def test_dict_versions():
    assert AmplitudeMixD is AmplitudeMixDict is AmplitudeMixd
    assert RandAmplitudeMixD is RandAmplitudeMixDict is RandAmplitudeMixd
    x, y = _image((1, 16, 16)), _image((1, 16, 16), seed=3)
    target = amplitude_phase(_image((1, 16, 16), seed=4), 2)[0]
    d = AmplitudeMixd(["image", "other"], amplitude_key="amp", beta=0.1, ratio=0.6)(
        {"image": x, "other": y, "amp": target}
    )
    np.testing.assert_allclose(d["image"], AmplitudeMix(0.1, 0.6)(x, target))
    np.testing.assert_allclose(d["other"], AmplitudeMix(0.1, 0.6)(y, target))
    assert d["amp"] is target

    bank = amplitude_bank([_image((1, 16, 16), seed=s) for s in range(5, 8)])
    t = RandAmplitudeMixd(["image", "other"], bank, beta=0.1).set_random_state(3)
    d1 = t({"image": x, "other": y})
    ref = RandAmplitudeMix(bank, beta=0.1).set_random_state(3)  # same seed, same draw
    ref.randomize()
    for key, img in (("image", x), ("other", y)):  # both keys share one draw
        np.testing.assert_allclose(d1[key], ref(img, randomize=False), atol=1e-6)
    d2 = RandAmplitudeMixd(["image", "other"], bank, beta=0.1).set_random_state(3)({"image": x, "other": y})
    np.testing.assert_array_equal(d1["image"], d2["image"])
    d0 = RandAmplitudeMixd("image", bank, beta=0.1, prob=0.0)({"image": x})
    assert d0["image"] is x


def test_empty_bank_is_identity_until_set():
    from omnifm_monai.transforms import RandAmplitudeMixd

    img = torch.rand(1, 16, 16)
    t = RandAmplitudeMixd("image", None, beta=0.1)
    assert torch.equal(t({"image": img})["image"], img)
    t.set_bank(torch.rand(2, 1, 16, 16) * 50)
    assert not torch.allclose(t({"image": img})["image"], img)
    t.set_bank([])
    assert torch.equal(t({"image": img})["image"], img)
