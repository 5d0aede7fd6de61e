"""Dictionary-based wrappers of :mod:`omnifm_monai.transforms.array`, with ``D`` / ``Dict`` aliases."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms.transform import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple

from .array import (
    AmplitudeMix,
    AmplitudeNormalize,
    ConvertBraTSLabels,
    LowFrequencyLogAmplitude,
    RandAmplitudeMix,
    SuperResolutionDegrade,
)

__all__ = [
    "LowFrequencyLogAmplituded",
    "LowFrequencyLogAmplitudeD",
    "LowFrequencyLogAmplitudeDict",
    "AmplitudeMixd",
    "AmplitudeMixD",
    "AmplitudeMixDict",
    "RandAmplitudeMixd",
    "RandAmplitudeMixD",
    "RandAmplitudeMixDict",
    "AmplitudeNormalized",
    "AmplitudeNormalizeD",
    "AmplitudeNormalizeDict",
    "SuperResolutionDegraded",
    "SuperResolutionDegradeD",
    "SuperResolutionDegradeDict",
    "ConvertBraTSLabelsd",
    "ConvertBraTSLabelsD",
    "ConvertBraTSLabelsDict",
]


class LowFrequencyLogAmplituded(MapTransform):
    """Dictionary-based :class:`~omnifm_monai.transforms.LowFrequencyLogAmplitude`.

    The descriptor has another shape and meaning than the image, so it is written to a new item
    ``f"{key}{output_postfix}"`` (MONAI's postfix idiom, as in ``ClassesToIndicesd``) and the image is kept.
    ``output_postfix=""`` replaces the image in place.
    """

    backend = LowFrequencyLogAmplitude.backend

    def __init__(
        self,
        keys: KeysCollection,
        beta: float = 0.1,
        output_postfix: str = "_logamp",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LowFrequencyLogAmplitude(beta)
        self.output_postfix = output_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.output_postfix}" if self.output_postfix else key] = self.transform(d[key])
        return d


class AmplitudeMixd(MapTransform):
    """Dictionary-based :class:`~omnifm_monai.transforms.AmplitudeMix`.

    ``amplitude_key`` names the item holding the target's full centred amplitude spectrum ``(C or 1, *S)``
    (e.g. a row of :func:`~omnifm_monai.transforms.amplitude_bank` attached by the dataset); every key in
    ``keys`` is mixed with it.
    """

    backend = AmplitudeMix.backend

    def __init__(
        self,
        keys: KeysCollection,
        amplitude_key: Hashable,
        beta: float = 0.01,
        ratio: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.amplitude_key = amplitude_key
        self.mixer = AmplitudeMix(beta=beta, ratio=ratio)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.mixer(d[key], d[self.amplitude_key])
        return d


class RandAmplitudeMixd(RandomizableTransform, MapTransform):
    """Dictionary-based :class:`~omnifm_monai.transforms.RandAmplitudeMix`; all keys share one draw
    (bank index and ratio), so they must share one spatial shape."""

    backend = RandAmplitudeMix.backend

    def __init__(
        self,
        keys: KeysCollection,
        bank: NdarrayOrTensor | Sequence[NdarrayOrTensor] | None,
        beta: float = 0.01,
        ratio_range: tuple[float, float] = (0.0, 1.0),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.mixer = RandAmplitudeMix(bank, beta=beta, ratio_range=ratio_range, prob=1.0)

    def set_bank(self, bank: NdarrayOrTensor | Sequence[NdarrayOrTensor] | None) -> None:
        """Replace the bank (``None`` / empty: no mixing), e.g. with the spectra the server sent this round."""
        self.mixer.set_bank(bank)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandAmplitudeMixd:
        super().set_random_state(seed, state)
        self.mixer.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.mixer.randomize()
        for key in self.key_iterator(d):
            d[key] = self.mixer(d[key], randomize=False)
        return d


class AmplitudeNormalized(MapTransform):
    """Dictionary-based :class:`~omnifm_monai.transforms.AmplitudeNormalize`."""

    backend = AmplitudeNormalize.backend

    def __init__(
        self,
        keys: KeysCollection,
        reference_amplitude: NdarrayOrTensor | None = None,
        strength: float = 1.0,
        beta: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = AmplitudeNormalize(reference_amplitude, strength=strength, beta=beta)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class SuperResolutionDegraded(MapTransform):
    """Dictionary-based :class:`~omnifm_monai.transforms.SuperResolutionDegrade`.

    For each key, a deep copy of the high-resolution item (metadata included) goes to the matching
    ``target_key``, then the item itself is replaced by its degraded version: ``{"image": LR, "target": HR}``.
    """

    backend = SuperResolutionDegrade.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        target_key: KeysCollection = "target",
        scale: int = 2,
        mode: str = "area",
        keep_size: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.target_keys = ensure_tuple(target_key)
        if len(self.target_keys) != len(self.keys):
            raise ValueError(
                f"target_key must name one item per key, got keys={self.keys} and target_key={self.target_keys}."
            )
        self.degrade = SuperResolutionDegrade(scale=scale, mode=mode, keep_size=keep_size)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, target_key in self.key_iterator(d, self.target_keys):
            d[target_key] = deepcopy(d[key])
            d[key] = self.degrade(d[key])
        return d


class ConvertBraTSLabelsd(MapTransform):
    """Dictionary-based wrapper of :class:`~omnifm_monai.transforms.ConvertBraTSLabels`."""

    backend = ConvertBraTSLabels.backend

    def __init__(
        self, keys: KeysCollection, whole_tumour: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ConvertBraTSLabels(whole_tumour)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


LowFrequencyLogAmplitudeD = LowFrequencyLogAmplitudeDict = LowFrequencyLogAmplituded
AmplitudeMixD = AmplitudeMixDict = AmplitudeMixd
RandAmplitudeMixD = RandAmplitudeMixDict = RandAmplitudeMixd
AmplitudeNormalizeD = AmplitudeNormalizeDict = AmplitudeNormalized
SuperResolutionDegradeD = SuperResolutionDegradeDict = SuperResolutionDegraded
ConvertBraTSLabelsD = ConvertBraTSLabelsDict = ConvertBraTSLabelsd
