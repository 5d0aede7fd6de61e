"""Questions as word indices for the VQA network: a vocabulary from the training questions, padding 0."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["PAD", "UNKNOWN", "TokenizeQuestiond", "build_vocabulary", "words"]

PAD, UNKNOWN = "<pad>", "<unk>"


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, apostrophes)."""
    return re.findall(r"[\w']+", text.lower())


def build_vocabulary(questions: Iterable[str], min_count: int = 1) -> list[str]:
    """``[PAD, UNKNOWN, *sorted words seen at least min_count times]``; index 0 is padding."""
    counts = Counter(w for q in questions for w in words(q))
    return [PAD, UNKNOWN, *sorted(w for w, c in counts.items() if c >= min_count)]


class TokenizeQuestiond(MapTransform):
    """Replace a question string by a ``max_length`` int64 tensor of word indices (0-padded, truncated).

    Words outside the vocabulary map to ``UNKNOWN``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        vocabulary: Sequence[str],
        max_length: int = 24,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(vocabulary) < 2 or vocabulary[0] != PAD or vocabulary[1] != UNKNOWN:
            raise ValueError(f"the vocabulary must start with {PAD!r}, {UNKNOWN!r} (see build_vocabulary).")
        self.index = {w: i for i, w in enumerate(vocabulary)}
        self.max_length = max_length

    def __call__(self, data: Mapping[Hashable, str]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            ids = [self.index.get(w, 1) for w in words(d[key])][: self.max_length]
            d[key] = torch.tensor(ids + [0] * (self.max_length - len(ids)), dtype=torch.long)
        return d
