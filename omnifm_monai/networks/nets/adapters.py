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


class ResNetAdapter:
    """MONAI ``ResNet``: tokens are the positions of the last stage; the suffix joins the pooled feature."""

    head = ("fc",)  # the task head (kept private by FedPer / FedRep)

    @staticmethod
    def token_dim(backbone: ResNet) -> int:
        return backbone.in_planes  # channels of the last stage, expansion included

    @staticmethod
    def encode(backbone: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        x = backbone.act(backbone.bn1(backbone.conv1(x)))
        if not backbone.no_max_pool:
            x = backbone.maxpool(x)
        x = backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))
        return _to_tokens(x)

    @staticmethod
    def decode(
        backbone: ResNet, tokens: torch.Tensor, state: Any, suffix: torch.Tensor | None, film=None
    ) -> torch.Tensor:
        x = backbone.avgpool(_from_tokens(tokens, state)).flatten(1)
        if suffix is not None:
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
    LEVELS = (1, 2, 3, 4)

    def __init__(self, level: int = 4, max_positions: int = 64) -> None:
        if level not in self.LEVELS:
            raise ValueError(f"the fusion level of a BasicUNet must be one of {self.LEVELS}, got {level!r}.")
        if max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got {max_positions!r}.")
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
        full = skips.pop()
        side = int(round(self.max_positions ** (1 / (full.ndim - 2))))
        while side ** (full.ndim - 2) > self.max_positions:
            side -= 1
        if all(n <= side for n in full.shape[2:]):
            tokens, shape = _to_tokens(full)
            return tokens, (shape, skips, None)
        grid = [min(n, side) for n in full.shape[2:]]
        pooled = F.adaptive_avg_pool2d(full, grid) if full.ndim == 4 else F.adaptive_avg_pool3d(full, grid)
        tokens, shape = _to_tokens(pooled)
        return tokens, (shape, skips, (full, tokens))

    def decode(
        self, backbone: BasicUNet, tokens: torch.Tensor, state: Any, suffix: torch.Tensor | None, film=None
    ) -> torch.Tensor:
        shape, skips, pooled = state
        fused = _from_tokens(tokens, shape)
        if pooled is not None:  # fused on the pooled grid: add the change at full resolution
            full, before = pooled
            change = _from_tokens(tokens - before, shape)
            fused = full + F.interpolate(change, size=full.shape[2:], mode="nearest")
        xs = [*skips, fused]
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


class VQANetAdapter:
    """:class:`VQANet`: image tokens are fused; the suffix joins the question feature."""

    head = ("classifier",)

    @staticmethod
    def token_dim(backbone: VQANet) -> int:
        return backbone.image_proj.out_features

    @staticmethod
    def encode(backbone: VQANet, x: torch.Tensor, question: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return backbone.encode_image(x), question

    @staticmethod
    def decode(
        backbone: VQANet, tokens: torch.Tensor, state: Any, suffix: torch.Tensor | None, film=None
    ) -> torch.Tensor:
        return backbone.answer(tokens, state, extra=suffix)


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
