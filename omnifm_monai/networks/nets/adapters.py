"""Adapters expose a backbone's token sequence to OmniFM without modifying the backbone.

An adapter is a stateless class with a ``head`` attribute (names of the backbone's task-head modules) and
three static methods:
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
    """MONAI ``BasicUNet``: tokens are the bottleneck positions; skips are unchanged; FiLM at the bottleneck and
    after every up-sampling block."""

    head = ("final_conv",)

    @staticmethod
    def token_dim(backbone: BasicUNet) -> int:
        return backbone.down_4.convs.conv_1.conv.out_channels

    @staticmethod
    def film_channels(backbone: BasicUNet) -> list[int]:
        ups = [backbone.upcat_4, backbone.upcat_3, backbone.upcat_2, backbone.upcat_1]
        return [BasicUNetAdapter.token_dim(backbone)] + [u.convs.conv_1.conv.out_channels for u in ups]

    @staticmethod
    def encode(backbone: BasicUNet, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        x0 = backbone.conv_0(x)
        x1 = backbone.down_1(x0)
        x2 = backbone.down_2(x1)
        x3 = backbone.down_3(x2)
        tokens, shape = _to_tokens(backbone.down_4(x3))
        return tokens, (shape, (x0, x1, x2, x3))

    @staticmethod
    def decode(
        backbone: BasicUNet, tokens: torch.Tensor, state: Any, suffix: torch.Tensor | None, film=None
    ) -> torch.Tensor:
        shape, (x0, x1, x2, x3) = state
        film = film or [None] * 5
        u = SuffixFiLM.apply(_from_tokens(tokens, shape), film[0])
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
