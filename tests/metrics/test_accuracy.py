import math
from types import SimpleNamespace

import torch

from omnifm_monai.metrics import AccuracyMetric, GroupAccuracy


def test_accuracy_metric_against_reference():
    logits = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(1))
    metric = AccuracyMetric()
    metric(logits[:12], labels[:12])
    metric(logits[12:], torch.nn.functional.one_hot(labels[12:], 4))  # one-hot labels too
    assert math.isclose(float(metric.aggregate()), float((logits.argmax(1) == labels).float().mean()), abs_tol=1e-6)
    metric.reset()
    assert torch.isnan(metric.aggregate())


def test_group_accuracy_per_answer_type():
    handler = GroupAccuracy("answer_type", prefix="val_acc")
    batch = [{"answer_type": t} for t in ["closed", "closed", "open", "open", "open"]]
    preds = [torch.tensor([0.9, 0.1]), torch.tensor([0.2, 0.8]), torch.tensor([0.1, 0.9]), torch.tensor([0.6, 0.4]), torch.tensor([0.3, 0.7])]
    labels = [torch.tensor(0), torch.tensor(0), torch.tensor(1), torch.tensor(1), torch.tensor(1)]
    engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=[{"pred": p, "label": y} for p, y in zip(preds, labels, strict=True)], metrics={}))
    handler.collect(engine)
    handler.publish(engine)
    assert engine.state.metrics == {"val_acc_closed": 0.5, "val_acc_open": 2 / 3}
