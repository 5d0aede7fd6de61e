from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from omnifm_monai.spectral import fft_centered
from omnifm_monai.transforms import (
    SuperResolutionDegrade,
    SuperResolutionDegradeD,
    SuperResolutionDegraded,
    SuperResolutionDegradeDict,
)


def _image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _block_mean(x, s):
    """Reference box downsampling through a numpy reshape: (C, *S) -> (C, *S / s)."""
    c, *spatial = x.shape
    split = [c]
    for n in spatial:
        split += [n // s, s]
    return x.reshape(split).mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def _affine_3d():
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.2, 2.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    return torch.as_tensor(affine)


@pytest.mark.parametrize("spatial", [(32, 48), (16, 24, 8)])
@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("mode", ["area", "kspace"])
def test_shapes_and_mean(spatial, scale, mode):
    x = _image((2, *spatial))
    hr = SuperResolutionDegrade(scale, mode, keep_size=True)(x)
    lr = SuperResolutionDegrade(scale, mode, keep_size=False)(x)
    assert isinstance(hr, np.ndarray) and hr.dtype == np.float32 and hr.shape == x.shape
    assert lr.shape == (2, *(n // scale for n in spatial))
    np.testing.assert_allclose(
        lr.mean(axis=tuple(range(1, x.ndim))), x.mean(axis=tuple(range(1, x.ndim))), atol=1e-5
    )
    if mode == "kspace":  # the DC bin is kept: the mean is preserved exactly on both grids
        np.testing.assert_allclose(
            hr.mean(axis=tuple(range(1, x.ndim))), x.mean(axis=tuple(range(1, x.ndim))), atol=1e-5
        )
        # the low-res matrix is the zero-filled image sampled every `scale` voxels
        np.testing.assert_allclose(
            lr, hr[(slice(None), *[slice(None, None, scale)] * len(spatial))], atol=1e-5
        )
    else:
        np.testing.assert_allclose(lr, _block_mean(x, scale), atol=1e-6)


@pytest.mark.parametrize("spatial,scale", [((32, 48), 4), ((24, 24), 8), ((16, 12, 8), 2)])
def test_kspace_keep_size_has_no_energy_outside_band(spatial, scale):
    x = _image((1, *spatial), seed=1)
    f_in = fft_centered(x.astype(np.float64), len(spatial))
    f_out = fft_centered(SuperResolutionDegrade(scale, "kspace")(x.astype(np.float64)), len(spatial))
    band, interior = np.zeros(spatial, bool), np.zeros(spatial, bool)
    # |k| <= m/2 (m bins for odd m, the edge pair +-m/2 shares the edge bin for even m); interior |k| < m/2
    band[tuple(slice(n // 2 - n // scale // 2, n // 2 + n // scale // 2 + 1) for n in spatial)] = True
    interior[
        tuple(slice(n // 2 - (n // scale - 1) // 2, n // 2 + (n // scale - 1) // 2 + 1) for n in spatial)
    ] = True
    assert np.abs(f_out[0][~band]).max() < 1e-10
    np.testing.assert_allclose(f_out[0][interior], f_in[0][interior], atol=1e-10)
    assert np.abs(f_out[0]).sum() > 0


def test_area_keep_size_constant_and_parity():
    const = np.full((1, 16, 16), 2.5, np.float32)
    np.testing.assert_allclose(SuperResolutionDegrade(4, "area")(const), const, atol=1e-5)
    np.testing.assert_allclose(SuperResolutionDegrade(2, "area")(np.full((1, 8, 8, 8), 2.5)), 2.5, atol=1e-12)
    x = _image((2, 16, 16))
    for mode in ("area", "kspace"):
        for keep in (True, False):
            t = SuperResolutionDegrade(2, mode, keep)
            out = t(torch.as_tensor(x))
            assert type(out) is torch.Tensor
            np.testing.assert_allclose(out.numpy(), t(x), atol=1e-6)
    assert SuperResolutionDegrade(2)(np.ones((1, 8, 8), np.int64)).dtype == np.float32


@pytest.mark.parametrize("mode,offset", [("area", 0.5), ("kspace", 0.0)])
@pytest.mark.parametrize("scale", [2, 4])
def test_metatensor_affine(mode, offset, scale):
    affine = _affine_3d()
    x = MetaTensor(torch.as_tensor(_image((1, 16, 16, 8))), affine=affine, meta={"filename_or_obj": "hr.nii"})
    same = SuperResolutionDegrade(scale, mode, keep_size=True)(x)
    assert (
        isinstance(same, MetaTensor)
        and torch.equal(same.affine, affine)
        and same.meta["filename_or_obj"] == "hr.nii"
    )
    lr = SuperResolutionDegrade(scale, mode, keep_size=False)(x)
    assert isinstance(lr, MetaTensor) and lr.meta["filename_or_obj"] == "hr.nii"
    assert torch.equal(x.affine, affine)  # the input is not touched
    # voxel j of the low-res grid sits on high-res voxel scale * j (+ block centre offset for "area")
    j = torch.tensor([[0, 0, 0], [1, 2, 1], [3, 1, 0]], dtype=torch.float64)
    hr_index = scale * j + (scale - 1) * offset
    to_h = lambda v: torch.cat([v, torch.ones(len(v), 1, dtype=v.dtype)], 1).T  # noqa: E731
    torch.testing.assert_close(lr.affine @ to_h(j), affine @ to_h(hr_index))
    np.testing.assert_allclose(np.linalg.norm(lr.affine[:3, :3], axis=0), scale * np.array([0.8, 1.2, 2.0]))


def test_metatensor_2d_affine():
    x = MetaTensor(torch.as_tensor(_image((1, 8, 12))), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))
    lr = SuperResolutionDegrade(2, "area", keep_size=False)(x)
    expected = torch.tensor(
        [[4.0, 0, 0, 1.0], [0, 6.0, 0, 1.5], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64
    )
    torch.testing.assert_close(lr.affine, expected)


def test_invalid_arguments_and_shapes():
    with pytest.raises(ValueError, match=r"\(30, 32\).*scale=4"):
        SuperResolutionDegrade(4)(_image((1, 30, 32)))
    with pytest.raises(ValueError, match=r"\(16, 16, 12\)"):
        SuperResolutionDegrade(8, "kspace")(_image((1, 16, 16, 12)))
    for scale in (0, 2.5, True):
        with pytest.raises(ValueError, match="scale"):
            SuperResolutionDegrade(scale)
    with pytest.raises(ValueError, match="mode"):
        SuperResolutionDegrade(2, "bicubic")


def test_dict_version():
    assert SuperResolutionDegradeD is SuperResolutionDegradeDict is SuperResolutionDegraded
    x = MetaTensor(
        torch.as_tensor(_image((1, 16, 16, 8))), affine=_affine_3d(), meta={"filename_or_obj": "hr.nii"}
    )
    d = SuperResolutionDegraded(scale=2, mode="kspace", keep_size=False)({"image": x, "label": 1})
    assert set(d) == {"image", "target", "label"}
    target = d["target"]
    assert isinstance(target, MetaTensor) and target is not x
    assert torch.equal(target.as_tensor(), x.as_tensor()) and torch.equal(target.affine, x.affine)
    assert target.meta["filename_or_obj"] == "hr.nii"
    assert d["image"].shape == (1, 8, 8, 4)
    torch.testing.assert_close(d["image"], SuperResolutionDegrade(2, "kspace", False)(x))

    y = _image((1, 8, 8))
    d = SuperResolutionDegraded(["a", "b"], ["a_hr", "b_hr"], scale=2)({"a": y, "b": 2 * y})
    np.testing.assert_array_equal(d["b_hr"], 2 * y)
    assert d["a"].shape == y.shape and not np.allclose(d["a"], y)
    with pytest.raises(ValueError, match="target_key"):
        SuperResolutionDegraded(["a", "b"], "target")
