import math

import torch

from omnifm_monai.metrics import AccuracyMetric, class_indices


def test_accuracy_metric_against_reference():
    logits = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(1))
    metric = AccuracyMetric()
    metric(logits[:12], labels[:12])
    metric(logits[12:], torch.nn.functional.one_hot(labels[12:], 4))  # one-hot labels too
    assert math.isclose(
        float(metric.aggregate()), float((logits.argmax(1) == labels).float().mean()), abs_tol=1e-6
    )
    metric.reset()
    assert torch.isnan(metric.aggregate())


def test_class_indices_from_logits_one_hot_and_indices():
    assert class_indices(torch.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist() == [1, 0]
    assert class_indices(torch.tensor([[2], [0]])).tolist() == [2, 0]
    assert class_indices(torch.tensor([3, 1])).tolist() == [3, 1]
