"""Out-of-distribution score: distance to the bank, its calibration on validation data, the inference record."""

import json
import logging

import torch
from ignite.engine import Engine

from omnifm_monai.handlers import NoveltyCalibration, NoveltyCheck, novelty_scores, site_centroids
from omnifm_monai.handlers.novelty import slices
from omnifm_monai.networks.blocks import SpectralKnowledgeBank
from omnifm_monai.networks.nets import OmniFMUNet


def _net():
    torch.manual_seed(0)
    return OmniFMUNet(2, 1, 2, features=(8, 8, 16, 32, 64, 8), spectral_dim=32, tokenizer_grid=8).eval()


def test_bank_novelty_is_one_minus_the_nearest_cosine():
    bank = SpectralKnowledgeBank(8, capacity=6)
    assert torch.isnan(bank.novelty(torch.randn(3, 8))).all()  # nothing to compare with yet
    keys = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    bank.merge([{"keys": keys, "site": 0, "modality": 0}])
    queries = torch.randn(5, 2, 8)  # multi-token queries are averaged, as for retrieval
    unit = torch.nn.functional.normalize(queries.mean(1), dim=-1)
    reference = 1 - (unit @ bank.keys[bank.valid].T).max(1).values
    assert torch.allclose(bank.novelty(queries), reference, atol=1e-6)
    assert torch.allclose(
        bank.novelty(bank.keys[bank.valid]), torch.zeros(4), atol=1e-6
    )  # a prototype itself
    assert ((bank.novelty(torch.randn(50, 8)) >= 0) & (bank.novelty(torch.randn(50, 8)) <= 2)).all()


def test_slices_flatten_volumes_along_their_last_axis():
    volume = torch.arange(2 * 1 * 3 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 3, 4)
    flat = slices(volume)
    assert flat.shape == (8, 1, 3, 3)
    assert torch.equal(flat[5], volume[1, :, :, :, 1])
    assert slices(volume[..., 0]).shape == (2, 1, 3, 3)  # slices pass through


def test_calibration_sets_the_validation_quantile_and_the_threshold_travels_in_the_state_dict(
    reference_slices,
):
    images, _ = reference_slices
    net = _net()
    loader = [{"image": images[i : i + 8]} for i in range(0, len(images), 8)]
    net.bank.merge([{"keys": site_centroids(net, loader[:2], 4), "site": 0, "modality": 0}])
    assert float(net.novelty_threshold) == 0.0  # not calibrated
    engine = Engine(lambda e, b: None)
    NoveltyCalibration(net, loader, quantile=0.9).attach(engine)
    engine.run([0], max_epochs=1)
    expected = torch.quantile(novelty_scores(net, loader), 0.9)
    assert float(net.novelty_threshold) > 0 and torch.isclose(net.novelty_threshold, expected)
    assert "novelty_threshold" in net.state_dict() and "novelty_threshold" not in net.private_state_keys()


def test_a_bank_of_mr_slices_finds_ct_slices_novel(reference_slices):
    """Real data, tokenizer at initialisation: with a bank summarising the MR sites' slices, CT slices score
    higher than held-out MR slices (AUROC; the flagged share at a calibrated threshold is a trained model's
    property, measured by ``benchmarks/novelty.py``)."""
    images, labels = reference_slices
    ct = labels == 0  # sites sorted by name: head_ct, icbm_t1, icbm_t2w
    mr_index = torch.nonzero(~ct).flatten()
    train, held_out = mr_index[::2], mr_index[1::2]
    net = _net()
    net.bank.merge([{"keys": site_centroids(net, [{"image": images[train]}], 8), "site": 0, "modality": 0}])
    inside, outside = net.novelty(images[held_out]), net.novelty(images[ct])
    auroc = float((outside[:, None] > inside[None, :]).float().mean())
    assert auroc >= 0.75, auroc  # chance: 0.5


def test_check_writes_the_score_beside_the_prediction_and_warns_above_the_threshold(tmp_path, caplog):
    from monai.data import MetaTensor, list_data_collate

    net = _net()
    torch.manual_seed(1)
    net.bank.merge([{"keys": torch.randn(4, 32), "site": 0, "modality": 0}])
    item = MetaTensor(torch.rand(1, 32, 32, 3), meta={"filename_or_obj": "/data/case7.nii.gz"})
    volume = list_data_collate([{"image": item}])["image"]  # a batch of one, as the evaluator's
    engine = Engine(lambda e, b: None)
    engine.state.device = torch.device("cpu")
    check = NoveltyCheck(net, tmp_path)
    engine.state.batch = {"image": volume}
    with caplog.at_level(logging.WARNING):
        check(engine)  # not calibrated: a score, no verdict
    record = json.loads((tmp_path / "case7_novelty.json").read_text())
    expected = net.novelty(slices(volume.as_tensor())).mean()
    assert abs(record["novelty"] - float(expected)) < 1e-5 and len(record["per_slice"]) == 3
    assert record["threshold"] is None and record["out_of_distribution"] is False and not caplog.records
    net.novelty_threshold.fill_(float(expected) / 2)
    with caplog.at_level(logging.WARNING):
        check(engine)
    record = json.loads((tmp_path / "case7_novelty.json").read_text())
    assert record["out_of_distribution"] is True
    assert any("case7.nii.gz: out of distribution" in r.getMessage() for r in caplog.records)
