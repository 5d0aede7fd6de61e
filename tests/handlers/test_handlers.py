import json
from types import SimpleNamespace

import torch
from monai.data import MetaTensor

from omnifm_monai.handlers import PredictionJSONWriter, SpectralBankRefresh, site_centroids
from omnifm_monai.networks import OmniFMResNet


def _net():
    torch.manual_seed(0)
    return OmniFMResNet(
        2,
        1,
        3,
        channels=(8, 16, 32, 64),
        spectral_dim=16,
        tokenizer_grid=8,
        bank_capacity=32,
        modalities=["T1", "CT"],
    )


def test_site_centroids_summarise_the_sites_tokens():
    net = _net()
    batches = [{"image": torch.rand(6, 1, 32, 32)}, {"image": torch.rand(4, 1, 32, 32) * 3}]
    centroids = site_centroids(net, batches, num_centroids=4)
    assert centroids.shape == (4, 16)
    tokens = torch.cat([net.spectral_tokens(b["image"]).mean(1) for b in batches])
    # every token is close to some centroid: the summary covers the data
    assert ((tokens @ centroids.T).max(dim=1).values > 0.8).all()
    assert net.training  # mode restored


def test_bank_refresh_replaces_this_sites_entries_each_epoch():
    net = _net()
    batches = [{"image": torch.rand(8, 1, 32, 32)}]
    refresh = SpectralBankRefresh(net, batches, num_centroids=3, site=2, modality="CT")
    engine = SimpleNamespace(state=SimpleNamespace(device=None, epoch=1))
    refresh(engine)
    refresh(engine)
    assert len(net.bank) == 3 and (net.bank.site[net.bank.valid] == 2).all()
    assert (net.bank.modality[net.bank.valid] == 1).all()


def test_prediction_writer_one_file_per_input(tmp_path):
    writer = PredictionJSONWriter(str(tmp_path), ["a", "b", "c"], output_postfix="level")
    images = [MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "/x/vol.nii.gz"}) for _ in range(2)]
    batch = [{"image": img, "slice_index": torch.tensor(i)} for i, img in enumerate(images)]
    output = [{"pred": torch.tensor([0.0, 2.0, 0.0])}, {"pred": torch.tensor([3.0, 0.0, 0.0])}]
    writer.collect(SimpleNamespace(state=SimpleNamespace(batch=batch, output=output)))
    writer.write()
    result = json.loads((tmp_path / "vol_level.json").read_text())
    assert result["input"] == "/x/vol.nii.gz"
    assert [p["prediction"] for p in result["predictions"]] == ["b", "a"]
    assert [p["slice_index"] for p in result["predictions"]] == [0, 1]
    p0 = torch.softmax(torch.tensor([0.0, 2.0, 0.0]), 0)
    assert abs(result["predictions"][0]["probability"] - float(p0[1])) < 1e-5
    assert not list(tmp_path.glob("*.tmp"))
