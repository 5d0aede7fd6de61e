"""The project's spectral convention: centred orthonormal FFT, amplitude/phase, low-pass windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnifm_monai.spectral import (
    SPECTRAL_NORM,
    amplitude_phase,
    fft_centered,
    ifft_centered,
    log_amplitude,
    low_pass_half_width,
    low_pass_log_amplitude,
    low_pass_slices,
    merge_amplitude_phase,
)

# (shape, spatial_dims): 2D and 3D, unbatched (C, *S) and batched (B, C, *S), odd and even sizes
SHAPES = [((2, 16, 12), 2), ((3, 2, 15, 8), 2), ((1, 8, 10, 7), 3), ((2, 1, 6, 8, 10), 3)]


def _image(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("shape,sd", SHAPES)
@pytest.mark.parametrize("as_torch", [False, True])
def test_fft_ifft_round_trip(shape, sd, as_torch):
    x = _image(shape)
    x = torch.as_tensor(x) if as_torch else x
    f = fft_centered(x, sd)
    assert isinstance(f, type(x)) and f.shape == x.shape and f.dtype in (np.complex128, torch.complex128)
    back = ifft_centered(f, sd)
    assert isinstance(back, type(x))
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-12)


@pytest.mark.parametrize("shape,sd", SHAPES)
@pytest.mark.parametrize("as_torch", [False, True])
def test_amplitude_phase_round_trip(shape, sd, as_torch):
    x = _image(shape).astype(np.float32)
    x = torch.as_tensor(x) if as_torch else x
    amp, pha = amplitude_phase(x, sd)
    for part in (amp, pha):
        assert isinstance(part, type(x)) and part.shape == x.shape and part.dtype == x.dtype
    assert (np.asarray(amp) >= 0).all() and (np.abs(np.asarray(pha)) <= math.pi + 1e-6).all()
    back = merge_amplitude_phase(amp, pha, sd)
    assert isinstance(back, type(x)) and back.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-5)


@pytest.mark.parametrize("shape,sd", SHAPES)
def test_matches_numpy_reference_and_parseval(shape, sd):
    x = _image(shape)
    axes = tuple(range(-sd, 0))
    ref = np.fft.fftshift(np.fft.fftn(x, axes=axes, norm="ortho"), axes=axes)
    f = fft_centered(x, sd)
    np.testing.assert_allclose(f, ref, atol=1e-12)
    assert SPECTRAL_NORM == "ortho"
    # Parseval per image/channel: the transform is unitary over the spatial axes
    np.testing.assert_allclose((np.abs(f) ** 2).sum(axis=axes), (x**2).sum(axis=axes), rtol=1e-10)


@pytest.mark.parametrize("shape,sd", SHAPES)
def test_numpy_torch_parity(shape, sd):
    x = _image(shape, seed=1).astype(np.float32)
    t = torch.as_tensor(x)
    np.testing.assert_allclose(fft_centered(x, sd), fft_centered(t, sd).numpy(), atol=1e-5)
    for a, b in zip(amplitude_phase(x, sd), amplitude_phase(t, sd), strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-5)
    lx, lt = log_amplitude(x, sd), log_amplitude(t, sd)
    assert isinstance(lx, np.ndarray) and isinstance(lt, torch.Tensor)
    np.testing.assert_allclose(lx, lt.numpy(), atol=1e-5)
    np.testing.assert_allclose(lx, np.log1p(amplitude_phase(x, sd)[0]), atol=1e-6)


@pytest.mark.parametrize("spatial", [(8, 8), (7, 9), (4, 6, 5)])
def test_dc_at_centre(spatial):
    x = np.full((1, *spatial), 3.0)
    f = fft_centered(x, len(spatial))
    centre = (0, *(n // 2 for n in spatial))
    energy = np.abs(f) ** 2
    assert energy[centre] == pytest.approx(energy.sum())
    assert f[centre].real == pytest.approx(3.0 * math.sqrt(math.prod(spatial)))  # ortho: DC = mean * sqrt(N)


@pytest.mark.parametrize(
    "spatial,beta,b",
    [
        ((64, 64), 0.1, 6),
        ((64, 48), 0.1, 4),
        ((100, 120), 0.05, 5),
        ((32, 32), 0.01, 1),
        ((8, 10, 12), 0.25, 2),
    ],
)
def test_low_pass_window(spatial, beta, b):
    assert low_pass_half_width(spatial, beta) == b == max(1, math.floor(beta * min(spatial)))
    slices = low_pass_slices(spatial, beta)
    for sl, n in zip(slices, spatial, strict=True):
        assert (sl.start, sl.stop) == (n // 2 - b, n // 2 + b + 1)  # 2b + 1 bins centred on DC
    window = np.zeros(spatial, bool)
    window[slices] = True
    assert int(window.sum()) == (2 * b + 1) ** len(spatial) and window[tuple(n // 2 for n in spatial)]


def test_low_pass_window_clipped_to_image():
    assert low_pass_slices((4, 5), 0.5) == (slice(0, 4), slice(0, 5))


@pytest.mark.parametrize("beta", [0.0, -0.1, 0.51, 1.0])
def test_invalid_beta_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        low_pass_half_width((32, 32), beta)


def test_invalid_spatial_dims_raises():
    with pytest.raises(ValueError, match="spatial_dims"):
        fft_centered(np.zeros((2, 4, 4)), 4)
    with pytest.raises(ValueError, match="spatial_dims"):
        fft_centered(np.zeros((4, 4)), 3)


def test_integer_input_gives_float_amplitude():
    from omnifm_monai.spectral import amplitude_phase

    x = torch.arange(16).reshape(1, 4, 4)
    amp, pha = amplitude_phase(x, 2)
    ref, _ = amplitude_phase(x.float(), 2)
    assert amp.dtype == torch.float32 and torch.allclose(amp, ref)
    amp_np, _ = amplitude_phase(x.numpy(), 2)
    assert amp_np.dtype == np.float32 and np.allclose(amp_np, ref.numpy())


@pytest.mark.parametrize("shape", [(8, 1, 128, 128), (3, 2, 33, 47), (2, 1, 9, 16, 11)])
@pytest.mark.parametrize("beta", [0.05, 0.15, 0.5])
def test_low_pass_log_amplitude_is_the_window_of_the_full_log_amplitude(shape, beta):
    """Gathered from the unshifted spectrum, the window holds exactly the values of the shifted full spectrum's."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    spatial_dims = len(shape) - 2
    full = log_amplitude(x, spatial_dims)[(..., *low_pass_slices(shape[2:], beta))]
    assert torch.equal(low_pass_log_amplitude(x, spatial_dims, beta), full)
