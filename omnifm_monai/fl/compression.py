"""Update compression: what a site uploads, encoded with a lossy codec and decoded on the server before aggregation.

A site compresses its *update*, the difference between its trained shared weights and the global weights it
received (a difference is small and centred, so quantising it loses far less than quantising the weights), and
the server decodes it to the original dtype: every strategy aggregates what it always aggregates, a
:class:`~omnifm_monai.fl.strategies.ClientUpdate` labelled ``diff``.

Codecs (:data:`CODECS`), applied to floating-point tensors; integer and boolean tensors (e.g. BatchNorm's
``num_batches_tracked``) and strategy extras travel unchanged:

* ``none``: the update as it is (bit for bit the uncompressed run);
* ``fp16``: half precision, about 1/2 of float32's bytes; relative error <= 2**-11 (absolute <= 2**-25 below
  fp16's normal range); values beyond +-65504 become inf and the server rejects the update;
* ``int8``: blockwise absmax 8-bit: the flattened tensor in blocks of ``block_size`` values, each stored as
  ``round(127 * x / absmax)`` with the block's absmax as a float32 scale, about 1/4 of float32's bytes (plus
  4 bytes a block); error <= absmax / 254 per value.

A non-finite value stays non-finite through every codec, so the server still rejects such an update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from omnifm_monai.errors import SettingsError

from .strategies import ClientUpdate

__all__ = [
    "BLOCK_SIZE",
    "CODECS",
    "EncodedUpdate",
    "check_codec",
    "decode",
    "decode_update",
    "encode",
    "encode_update",
    "error_bound",
    "to_diff",
]

CODECS = ("none", "fp16", "int8")
BLOCK_SIZE = 128
_BYTES = {"fp16": 2, "int8": 1}  # bytes a value takes in each lossy codec


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise SettingsError(f"compression must be one of {CODECS}, got {codec!r}.")
    return codec


def _compressed(tensor: torch.Tensor, codec: str) -> bool:
    """Whether ``codec`` encodes ``tensor``: floating point and wider than the codec's values."""
    return codec != "none" and tensor.is_floating_point() and tensor.element_size() > _BYTES[codec]


def _blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(n,)`` -> ``(ceil(n / block_size), block_size)``, zero-padded."""
    pad = -flat.numel() % block_size
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, block_size)


def encode(
    weights: Mapping[str, torch.Tensor], codec: str, block_size: int = BLOCK_SIZE
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """``(values, scales, dtypes)``: every tensor of ``weights`` encoded with ``codec`` (same names and shapes;
    int8 or fp16 values for the floating-point ones, the rest unchanged), the int8 blocks' float32 scales, and the
    original dtype of every encoded tensor (``"float32"``)."""
    check_codec(codec)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
    values, scales, dtypes = {}, {}, {}
    for name, tensor in weights.items():
        tensor = tensor.detach().cpu()
        if not _compressed(tensor, codec):
            values[name] = tensor
            continue
        dtypes[name] = str(tensor.dtype).removeprefix("torch.")
        if codec == "fp16":
            values[name] = tensor.to(torch.float16)
            continue
        blocks = _blocks(tensor.reshape(-1).float(), block_size)
        absmax = blocks.abs().amax(dim=1)
        # x / absmax in [-1, 1]; an all-zero block has absmax 0 and stays 0 (NaN/Inf blocks stay non-finite)
        unit = blocks / torch.where(absmax == 0, torch.ones_like(absmax), absmax)[:, None]
        values[name] = torch.round(unit * 127).to(torch.int8).reshape(-1)[: tensor.numel()].view(tensor.shape)
        # a block holding NaN/Inf: its quantised values are meaningless, its scale keeps it non-finite
        scales[name] = torch.where(torch.isfinite(absmax), absmax, torch.full_like(absmax, float("nan")))
    return values, scales, dtypes


def decode(
    values: Mapping[str, torch.Tensor],
    scales: Mapping[str, torch.Tensor],
    dtypes: Mapping[str, str],
    block_size: int = BLOCK_SIZE,
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode`: every tensor back in its original dtype (the encoded ones with the codec's error)."""
    out = {}
    for name, value in values.items():
        if name not in dtypes:
            out[name] = value
            continue
        dtype = getattr(torch, dtypes[name])
        if name not in scales:  # fp16
            out[name] = value.to(dtype)
            continue
        blocks = _blocks(value.reshape(-1).float(), block_size)
        restored = blocks * (scales[name].float()[:, None] / 127)
        out[name] = restored.reshape(-1)[: value.numel()].view(value.shape).to(dtype)
    return out


def error_bound(tensor: torch.Tensor, codec: str, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """The largest error :func:`encode` then :func:`decode` can make on each value of ``tensor`` (same shape)."""
    check_codec(codec)
    if not _compressed(tensor, codec):
        return torch.zeros(tensor.shape, dtype=torch.float64)
    x = tensor.detach().cpu().double()
    if codec == "fp16":
        return x.abs() * 2.0**-11 + 2.0**-25
    absmax = _blocks(x.reshape(-1), block_size).abs().amax(dim=1, keepdim=True)
    # half a step of 127 per absmax, and float32's rounding of the scaled values
    bound = (absmax * (1 / 254 + 2.0**-20)).expand(-1, block_size).reshape(-1)[: x.numel()]
    return bound.view(x.shape)


def to_diff(update: ClientUpdate, global_weights: Mapping[str, torch.Tensor]) -> ClientUpdate:
    """``update`` as ``local - global`` (labelled ``diff``) in each tensor's dtype; integer tensors exactly."""
    if update.weight_type == "diff":
        return update
    missing = sorted(
        k for k, v in update.weights.items() if k not in global_weights or global_weights[k].shape != v.shape
    )
    if missing:
        raise ValueError(
            f"site {update.site}: {missing[:3]} have no matching global weight to take a difference to."
        )
    if any(v.dtype == torch.bool for v in update.weights.values()):
        raise ValueError(
            f"site {update.site}: boolean tensors have no difference; send them with compression none."
        )
    weights = {
        k: (v.double() - global_weights[k].double()).to(v.dtype)
        if v.is_floating_point()
        else v - global_weights[k]
        for k, v in update.weights.items()
    }
    return ClientUpdate(update.site, weights, update.num_samples, "diff", update.extra)


@dataclass
class EncodedUpdate:
    """A site's upload under a lossy codec: the encoded difference (:func:`encode`), its samples and extras."""

    site: str
    values: dict[str, torch.Tensor]
    scales: dict[str, torch.Tensor]
    dtypes: dict[str, str]
    num_samples: int
    codec: str
    block_size: int = BLOCK_SIZE
    weight_type: str = "diff"
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """What travels (its serialised size is the upload's bytes)."""
        return {
            "weights": self.values,
            "scales": self.scales,
            "dtypes": self.dtypes,
            "codec": self.codec,
            "block_size": self.block_size,
            "weight_type": self.weight_type,
            "extra": self.extra,
            "num_samples": self.num_samples,
        }


def encode_update(
    update: ClientUpdate, global_weights: Mapping[str, torch.Tensor], codec: str, block_size: int = BLOCK_SIZE
) -> ClientUpdate | EncodedUpdate:
    """What a site uploads: ``update`` itself for ``none``, else its difference to ``global_weights`` encoded
    (without global weights, e.g. a strategy that shares none, the weights themselves)."""
    if check_codec(codec) == "none":
        return update
    diff = to_diff(update, global_weights) if global_weights else update
    values, scales, dtypes = encode(diff.weights, codec, block_size)
    return EncodedUpdate(
        update.site,
        values,
        scales,
        dtypes,
        update.num_samples,
        codec,
        block_size,
        diff.weight_type,
        update.extra,
    )


def decode_update(upload: ClientUpdate | EncodedUpdate) -> ClientUpdate:
    """What the server aggregates of an upload: a plain update as it is, an encoded one decoded."""
    if isinstance(upload, ClientUpdate):
        return upload
    weights = decode(upload.values, upload.scales, upload.dtypes, upload.block_size)
    return ClientUpdate(upload.site, weights, upload.num_samples, upload.weight_type, upload.extra)
