from __future__ import annotations

import pytest
import torch
from monai.data import CacheDataset, MetaTensor, get_track_meta
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambdad,
    MapTransform,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    ScaleIntensityd,
)
from monai.utils import set_determinism

from omnifm_monai.transforms import PlainTensorCompose


def _items(n=6):
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "image": MetaTensor(
                torch.rand(1, 24, 20, generator=gen), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0]))
            )
        }
        for _ in range(n)
    ]


def _deterministic():
    return [ScaleIntensityd("image"), EnsureTyped("image", dtype=torch.float32)]


def _random():
    return [
        RandFlipd("image", prob=0.5, spatial_axis=0),
        RandAffined(
            "image", prob=0.9, rotate_range=0.3, scale_range=0.1, translate_range=3, padding_mode="zeros"
        ),
        RandScaleIntensityd("image", factors=0.2, prob=0.5),
    ]


def test_the_same_values_as_a_tracked_compose_ending_in_plain_tensors():
    """Same seed, same transforms: the plain part draws the same random numbers and computes the same values
    as the pipeline with metadata that converts to plain tensors at its end; the output holds plain tensors."""
    set_determinism(seed=3)
    tracked = Compose(_deterministic() + _random() + [EnsureTyped("image", track_meta=False)])
    set_determinism(seed=3)
    plain = PlainTensorCompose(_deterministic() + _random(), plain_from=2)
    set_determinism(seed=None)
    for item in _items() * 3:  # several draws per item
        a, b = tracked(dict(item)), plain(dict(item))
        assert type(b["image"]) is torch.Tensor
        assert torch.equal(a["image"], b["image"])
    assert get_track_meta()  # restored


class _RecordType(MapTransform):
    """Notes the type of each image it sees and changes nothing."""

    def __init__(self, seen: list) -> None:
        super().__init__("image")
        self.seen = seen

    def __call__(self, data):
        self.seen.append(type(data["image"]))
        return data


def test_the_tracked_part_keeps_metadata_and_cache_dataset_caches_only_it():
    """CacheDataset caches up to the first random transform (with its metadata) and augments anew, on plain
    tensors, on every access: the plain part is not cached."""
    seen = []
    set_determinism(seed=0)
    pipeline = PlainTensorCompose(
        [*_deterministic(), _RecordType(seen), *_random(), _RecordType(seen)], plain_from=3
    )
    dataset = CacheDataset(_items(2), pipeline, cache_rate=1.0, num_workers=0, progress=False)
    set_determinism(seed=None)
    assert isinstance(dataset._cache[0]["image"], MetaTensor)  # cached with its metadata
    assert seen == [MetaTensor, MetaTensor]  # the deterministic part ran once per item, tracked
    draws = [dataset[0]["image"] for _ in range(4)]
    assert all(type(d) is torch.Tensor for d in draws)
    assert seen[2:] == [torch.Tensor] * 4  # the augmentations ran on every access and returned plain tensors
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # augmented anew, not cached


def test_the_tracking_flag_is_restored_when_a_transform_raises():
    def fail(_):
        raise RuntimeError("broken augmentation")

    pipeline = PlainTensorCompose([ScaleIntensityd("image"), Lambdad("image", fail)], plain_from=1)
    with pytest.raises(RuntimeError, match="applying transform"):
        pipeline(dict(_items(1)[0]))
    assert get_track_meta()


def test_plain_from_is_checked():
    with pytest.raises(ValueError, match=r"plain_from must lie in \[0, 2\]"):
        PlainTensorCompose(_deterministic(), plain_from=3)
