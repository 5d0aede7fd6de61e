"""The FL client's own settings on a bundle: what it leaves out of local training, and that the weights stay the same."""

from __future__ import annotations

from pathlib import Path

import torch

from omnifm_monai.fl.engine import client_round, make_clients, make_strategy, site_network

BUNDLE = str(Path(__file__).resolve().parents[2] / "bundles" / "omnifm_segmentation")
SMALL = {"image_size": 32, "batch_size": 8}


def _train_one_round(reference_sites, workdir, overrides):
    sites = {"icbm_t1": str(reference_sites / "icbm_t1")}
    strategy = make_strategy(BUNDLE, "fedavg", list(sites), dataset_dir=sites["icbm_t1"])[0]
    network = site_network(BUNDLE, strategy, SMALL, seed=0, dataset_dir=sites["icbm_t1"])
    client = make_clients(
        BUNDLE, strategy, sites, network=network, overrides={**SMALL, **overrides}, workdir=workdir
    )["icbm_t1"]
    update = client_round(client, client._shared_state(), {}, seed=0, rnd=0, index=0)
    return client, update.weights


def test_local_training_computes_no_metric_and_trains_the_same_weights(reference_sites, tmp_path):
    client, weights = _train_one_round(reference_sites, tmp_path / "fl", {})
    assert client.trainer.state.metrics == {}  # no post-processing and Dice on the training batches
    # the bundle's own training metric switched back on: the same steps, the same weights, bit for bit
    bundle_metric = {
        "train::trainer::key_train_metric": "@train::key_metric",
        "train::trainer::postprocessing": "@train::postprocessing",
    }
    with_metric, expected = _train_one_round(reference_sites, tmp_path / "bundle", bundle_metric)
    assert "train_mean_dice" in with_metric.trainer.state.metrics
    assert weights.keys() == expected.keys()
    for k, v in weights.items():
        assert torch.equal(v, expected[k]), k
