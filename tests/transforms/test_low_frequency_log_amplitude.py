from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from omnifm_monai.spectral import log_amplitude, low_pass_half_width, low_pass_slices
from omnifm_monai.transforms import (
    LowFrequencyLogAmplitude,
    LowFrequencyLogAmplitudeD,
    LowFrequencyLogAmplituded,
    LowFrequencyLogAmplitudeDict,
)


def _image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


@pytest.mark.parametrize("shape,beta", [((2, 64, 48), 0.1), ((1, 32, 32), 0.05), ((3, 20, 24, 16), 0.1)])
def test_shape_and_values(shape, beta):
    x = _image(shape)
    out = LowFrequencyLogAmplitude(beta)(x)
    b = low_pass_half_width(shape[1:], beta)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (shape[0], *([2 * b + 1] * (len(shape) - 1)))
    ref = log_amplitude(x, len(shape) - 1)[(slice(None), *low_pass_slices(shape[1:], beta))]
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # DC (mean * sqrt(N)) sits in the centre of the window
    centre = (0, *([b] * (len(shape) - 1)))
    assert out[centre] == pytest.approx(np.log1p(x[0].mean() * np.sqrt(x[0].size)), rel=1e-5)


def test_numpy_torch_parity_and_types():
    x = _image((2, 32, 32))
    t = LowFrequencyLogAmplitude(0.1)(torch.as_tensor(x))
    assert type(t) is torch.Tensor
    np.testing.assert_allclose(t.numpy(), LowFrequencyLogAmplitude(0.1)(x), atol=1e-6)
    # a frequency-domain descriptor has no spatial affine: plain tensor out
    m = LowFrequencyLogAmplitude(0.1)(MetaTensor(torch.as_tensor(x), affine=torch.eye(4) * 2))
    assert type(m) is torch.Tensor
    np.testing.assert_allclose(m.numpy(), t.numpy())
    # integer images are computed in float32
    ints = LowFrequencyLogAmplitude(0.1)(np.arange(2 * 16 * 16).reshape(2, 16, 16))
    assert ints.dtype == np.float32


def test_clipped_window_and_invalid_beta():
    assert LowFrequencyLogAmplitude(0.5)(_image((1, 6, 7))).shape == (1, 6, 7)
    for beta in (0.0, 0.6, -1.0):
        with pytest.raises(ValueError, match="beta"):
            LowFrequencyLogAmplitude(beta)


def test_dict_version():
    assert LowFrequencyLogAmplitudeD is LowFrequencyLogAmplitudeDict is LowFrequencyLogAmplituded
    x = _image((1, 32, 32))
    d = LowFrequencyLogAmplituded(["image", "extra"], beta=0.1, allow_missing_keys=True)({"image": x})
    assert set(d) == {"image", "image_logamp"} and d["image"] is x
    np.testing.assert_allclose(d["image_logamp"], LowFrequencyLogAmplitude(0.1)(x))
    d = LowFrequencyLogAmplituded("image", beta=0.1, output_postfix="")({"image": x})
    assert set(d) == {"image"} and d["image"].shape == (1, 7, 7)
