import torch

from omnifm_monai.inferers import PlanarInferer


def test_planar_inferer_matches_per_slice_calls():
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    vol = torch.rand(1, 1, 16, 12, 5)
    out = PlanarInferer(sw_batch_size=2)(vol, net)
    assert out.shape == (1, 2, 16, 12, 5)
    expected = torch.stack([net(vol[..., i]) for i in range(5)], dim=-1)
    assert torch.allclose(out, expected, atol=1e-6)
    image = torch.rand(2, 1, 16, 12)
    assert torch.equal(PlanarInferer()(image, net), net(image))
