from types import SimpleNamespace

import torch

from omnifm_monai.handlers import GroupAccuracy


def test_group_accuracy_per_answer_type():
    handler = GroupAccuracy("answer_type", prefix="val_acc")
    batch = [{"answer_type": t} for t in ["closed", "closed", "open", "open", "open"]]
    preds = [
        torch.tensor([0.9, 0.1]),
        torch.tensor([0.2, 0.8]),
        torch.tensor([0.1, 0.9]),
        torch.tensor([0.6, 0.4]),
        torch.tensor([0.3, 0.7]),
    ]
    labels = [torch.tensor(0), torch.tensor(0), torch.tensor(1), torch.tensor(1), torch.tensor(1)]
    output = [{"pred": p, "label": y} for p, y in zip(preds, labels, strict=True)]
    engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=output, metrics={}))
    handler.collect(engine)
    handler.publish(engine)
    assert engine.state.metrics == {"val_acc_closed": 0.5, "val_acc_open": 2 / 3}


def test_group_accuracy_names_groups_and_skips_items_without_the_key():
    handler = GroupAccuracy(
        "site_constant", prefix="val_acc", names={"True": "site_constant", "False": "site_varying"}
    )
    batch = [
        {"site_constant": torch.tensor(True)},
        {"site_constant": False},
        {"site_constant": torch.tensor(False)},
        {},
    ]
    output = [{"pred": torch.tensor([0.9, 0.1]), "label": torch.tensor(y)} for y in (0, 1, 0, 0)]
    engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=output, metrics={}))
    handler.collect(engine)
    handler.publish(engine)
    assert engine.state.metrics == {"val_acc_site_constant": 1.0, "val_acc_site_varying": 0.5}
