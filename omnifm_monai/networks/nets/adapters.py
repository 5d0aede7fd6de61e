"""Adapters expose a backbone's token sequence to OmniFM without modifying the backbone.

An adapter is a class (OmniFM holds an instance of it; an adapter with settings, such as the UNet's fusion
level, takes them in its constructor) with a ``head`` attribute (names of the backbone's task-head modules) and
three methods:
``token_dim(backbone)``, ``encode(backbone, x, *args) -> (tokens (B, L, d), state)`` and
``decode(backbone, tokens, state, suffix, film=None) -> output``, where ``suffix (B, d)`` (or ``None``) is the
gated private-suffix output. An adapter whose decoder has levels to modulate also has
``film_channels(backbone)`` (channels of each level, bottleneck first); ``film`` is then one ``(scale, shift)``
pair per level (:class:`~omnifm_monai.networks.blocks.SuffixFiLM`). ``decode(encode(x))`` must compute exactly
``backbone(x)`` when tokens are unchanged and ``suffix`` and ``film`` are ``None``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, ResNet
from torch import nn

from omnifm_monai.networks.blocks import SuffixFiLM

from .vqa import VQANet

__all__ = ["ADAPTERS", "BasicUNetAdapter", "ResNetAdapter", "VQANetAdapter", "adapter_for"]


def _to_tokens(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    return x.flatten(2).transpose(1, 2), tuple(x.shape[1:])  # (B, C, *s) -> (B, prod(s), C)


def _from_tokens(tokens: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], *shape)


def _check_level(level: int, max_positions: int, what: str) -> None:
    if level not in (1, 2, 3, 4):
        raise ValueError(f"the fusion level of a {what} must be one of (1, 2, 3, 4), got {level!r}.")
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions!r}.")


def _pool_tokens(full: torch.Tensor, max_positions: int) -> tuple[torch.Tensor, Any]:
    """``full (B, C, *S)`` as tokens: its positions, or those of its average-pooled grid of at most
    ``max_positions`` (e.g. 8 x 8) when it has more; the state lets :func:`_unpool_tokens` add the change back."""
    side = int(round(max_positions ** (1 / (full.ndim - 2))))
    while side ** (full.ndim - 2) > max_positions:
        side -= 1
    if all(n <= side for n in full.shape[2:]):
        tokens, shape = _to_tokens(full)
        return tokens, (shape, None)
    grid = [min(n, side) for n in full.shape[2:]]
    pooled = F.adaptive_avg_pool2d(full, grid) if full.ndim == 4 else F.adaptive_avg_pool3d(full, grid)
    tokens, shape = _to_tokens(pooled)
    return tokens, (shape, (full, tokens))


def _unpool_tokens(tokens: torch.Tensor, state: Any) -> torch.Tensor:
    """The feature map of fused ``tokens``; fused on a pooled grid, the change is upsampled (nearest) and added
    to the full-resolution features."""
    shape, pooled = state
    if pooled is None:
        return _from_tokens(tokens, shape)
    full, before = pooled
    change = _from_tokens(tokens - before, shape)
    return full + F.interpolate(change, size=full.shape[2:], mode="nearest")


class _ResNetTrunkAdapter:
    """A MONAI ``ResNet`` trunk split after stage ``level`` (1-4): its positions are the tokens (pooled to at
    most ``max_positions``, as for :class:`BasicUNetAdapter`); the later stages are computed from the fused
    tokens, each followed by FiLM from the suffix. Level 4, the default, is the last stage (at 32 x 32 input one
    position); level 2 has 4x the positions of level 3 at half the channels, so fusion reaches more of the
    image with smaller (cheaper to send) attention and prompt weights."""

    def __init__(self, level: int = 4, max_positions: int = 64) -> None:
        _check_level(level, max_positions, type(self).__name__[: -len("Adapter")])
        self.level, self.max_positions = level, max_positions

    @staticmethod
    def _stages(trunk: ResNet) -> list[nn.Module]:
        return [trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4]

    def _stage_channels(self, trunk: ResNet) -> list[int]:
        convs = lambda m: [c for c in m.modules() if isinstance(c, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]  # noqa: E731
        return [convs(stage)[-1].out_channels for stage in self._stages(trunk)]

    def _trunk(self, backbone: nn.Module) -> ResNet:
        return backbone

    def film_channels(self, backbone: nn.Module) -> list[int]:
        return self._stage_channels(self._trunk(backbone))[self.level :]

    def _encode_trunk(self, trunk: ResNet, x: torch.Tensor) -> torch.Tensor:
        x = trunk.act(trunk.bn1(trunk.conv1(x)))
        x = x if trunk.no_max_pool else trunk.maxpool(x)
        for stage in self._stages(trunk)[: self.level]:
            x = stage(x)
        return x

    def _decode_trunk(self, trunk: ResNet, x: torch.Tensor, film) -> torch.Tensor:
        for i, stage in enumerate(self._stages(trunk)[self.level :]):
            x = SuffixFiLM.apply(stage(x), film[i] if film else None)
        return x


class ResNetAdapter(_ResNetTrunkAdapter):
    """MONAI ``ResNet``: tokens are the positions of stage ``level`` (default 4, the last); fused at the last
    stage, the suffix joins the pooled feature, otherwise it reaches the output through FiLM of the later
    stages."""

    head = ("fc",)  # the task head (kept private by FedPer / FedRep)

    def token_dim(self, backbone: ResNet) -> int:
        return self._stage_channels(backbone)[self.level - 1]

    def encode(self, backbone: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return _pool_tokens(self._encode_trunk(backbone, x), self.max_positions)

    def decode(
        self, backbone: ResNet, tokens: torch.Tensor, state: Any, suffix: torch.Tensor | None, film=None
    ) -> torch.Tensor:
        x = self._decode_trunk(backbone, _unpool_tokens(tokens, state), film)
        x = backbone.avgpool(x).flatten(1)
        if suffix is not None and self.level == 4:
            x = x + suffix
        return backbone.fc(x) if backbone.fc is not None else x


class BasicUNetAdapter:
    """MONAI ``BasicUNet``: tokens are the positions of encoder level ``level`` (4: the bottleneck; 3: the
    level above it, with 4x the positions at half the channels, ...); the encoder levels below it and every
    skip are computed from the fused tokens; FiLM at the bottleneck and after every up-sampling block.

    An instance carries its level (``BasicUNetAdapter(3)``); the class itself is the bottleneck adapter.
    ``max_positions`` bounds the cost of fusion at large inputs: a level with more positions is fused on its
    average-pooled grid of at most that many positions (e.g. 8 x 8), and the fused change is upsampled back
    (nearest) and added to the level's full-resolution features; at or below the bound nothing is pooled.
    """

    head = ("final_conv",)

    def __init__(self, level: int = 4, max_positions: int = 64) -> None:
        _check_level(level, max_positions, "BasicUNet")
        self.level, self.max_positions = level, max_positions

    @staticmethod
    def _encoder(backbone: BasicUNet) -> list[nn.Module]:
        return [backbone.conv_0, backbone.down_1, backbone.down_2, backbone.down_3, backbone.down_4]

    def token_dim(self, backbone: BasicUNet) -> int:
        return self._encoder(backbone)[self.level].convs.conv_1.conv.out_channels

    @staticmethod
    def film_channels(backbone: BasicUNet) -> list[int]:
        ups = [backbone.upcat_4, backbone.upcat_3, backbone.upcat_2, backbone.upcat_1]
        return [backbone.down_4.convs.conv_1.conv.out_channels] + [
            u.convs.conv_1.conv.out_channels for u in ups
        ]

    def encode(self, backbone: BasicUNet, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        skips = []
        for block in self._encoder(backbone)[: self.level + 1]:
            x = block(x)
            skips.append(x)
        tokens, state = _pool_tokens(skips.pop(), self.max_positions)
        return tokens, (state, skips)

    def decode(
        self, backbone: BasicUNet, tokens: torch.Tensor, state: Any, suffix: torch.Tensor | None, film=None
    ) -> torch.Tensor:
        state, skips = state
        xs = [*skips, _unpool_tokens(tokens, state)]
        for block in self._encoder(backbone)[len(xs) :]:  # the levels below the fused one
            xs.append(block(xs[-1]))
        x0, x1, x2, x3, x4 = xs
        film = film or [None] * 5
        u = SuffixFiLM.apply(x4, film[0])
        for level, (up, skip) in enumerate(
            zip(
                [backbone.upcat_4, backbone.upcat_3, backbone.upcat_2, backbone.upcat_1],
                [x3, x2, x1, x0],
                strict=True,
            ),
            1,
        ):
            u = SuffixFiLM.apply(up(u, skip), film[level])
        return backbone.final_conv(u)


class VQANetAdapter(_ResNetTrunkAdapter):
    """:class:`VQANet`: tokens are the image positions of its ResNet trunk's stage ``level``; at level 4 (the
    default) the projected image tokens the question attends over, and the suffix joins the question feature;
    below it, the later stages (with FiLM from the suffix) and the projection are computed from the fused
    tokens."""

    head = ("classifier",)

    def _trunk(self, backbone: VQANet) -> ResNet:
        return backbone.image_encoder

    def token_dim(self, backbone: VQANet) -> int:
        if self.level == 4:
            return backbone.image_proj.out_features
        return self._stage_channels(backbone.image_encoder)[self.level - 1]

    def encode(self, backbone: VQANet, x: torch.Tensor, question: torch.Tensor) -> tuple[torch.Tensor, Any]:
        x = self._encode_trunk(backbone.image_encoder, x)
        if self.level == 4:  # the projection is per position: project the map, then pool (the same as after)
            x = backbone.image_proj(x.movedim(1, -1)).movedim(-1, 1)
        tokens, state = _pool_tokens(x, self.max_positions)
        return tokens, (state, question)

    def decode(
        self, backbone: VQANet, tokens: torch.Tensor, state: Any, suffix: torch.Tensor | None, film=None
    ) -> torch.Tensor:
        state, question = state
        x = _unpool_tokens(tokens, state)
        if self.level == 4:
            return backbone.answer(_to_tokens(x)[0], question, extra=suffix)
        x = self._decode_trunk(backbone.image_encoder, x, film)
        return backbone.answer(backbone.image_proj(_to_tokens(x)[0]), question)


ADAPTERS: dict[type, type] = {ResNet: ResNetAdapter, BasicUNet: BasicUNetAdapter, VQANet: VQANetAdapter}


def adapter_for(backbone: nn.Module) -> type:
    """The adapter registered for the backbone's class (or a parent class)."""
    for cls, adapter in ADAPTERS.items():
        if isinstance(backbone, cls):
            return adapter
    raise TypeError(
        f"no OmniFM adapter for {type(backbone).__name__}; known: {[c.__name__ for c in ADAPTERS]}. "
        "Pass `adapter` (an adapter class or its dotted path)."
    )
