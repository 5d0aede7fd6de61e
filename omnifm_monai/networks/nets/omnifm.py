"""The OmniFM wrapper: any MONAI backbone with an adapter becomes an OmniFM network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, ResNet
from monai.utils import optional_import
from torch import nn

from omnifm_monai.networks.blocks import (
    CrossAttentionFusion,
    PrefixSuffixPrompt,
    SpectralKnowledgeBank,
    SpectralTokenizer,
    SuffixFiLM,
    ZeroGate,
    is_private,
)

from .adapters import BasicUNetAdapter, ResNetAdapter, VQANetAdapter, adapter_for
from .vqa import VQANet

__all__ = ["NORM_TYPES", "OmniFM", "OmniFMResNet", "OmniFMUNet", "OmniFMVQA", "module_state_keys"]

#: normalisation layers (their weights and statistics): FedBN's private part, and OmniFM's with ``private_norms``
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def module_state_keys(root: nn.Module, modules: Sequence[nn.Module]) -> set[str]:
    """The state-dict keys of ``root`` that belong to ``modules`` (found by identity, not by name)."""
    targets = {id(m) for m in modules}
    keys: set[str] = set()
    for name, module in root.named_modules():
        if id(module) in targets:
            keys |= {f"{name}.{k}" if name else k for k in module.state_dict()}
    return keys


class OmniFM(nn.Module):
    """Wrap a backbone with OmniFM's spectral prior: tokenizer, GSKR bank, ECAF, PSP and the SPA hook.

    Forward pass (``x`` the image, ``r`` the backbone tokens exposed by the adapter)::

        s = Tok(x)                                 # (B, m, d_s), unit norm
        S_g = bank.retrieve(s)                     # (B, k, d_s), no gradient         [use_gskr]
        context = [s || S_g]                       # the local token joins the retrieved prior
        Z = ECAF(r, context)                       # (B, L, d)                        [use_ecaf]
        delta_r, c = PSP([prefix(Z) || r || c_i])  # private suffix c_i               [use_prefix / use_suffix]
        r' = r + tanh(alpha) * delta_r             # alpha = 0 at init: r' = r
        out = decode(r', suffix=tanh(alpha) * c,   # private_gate: alpha is the site's own
                     film=FiLM(c))                 # UNets: every decoder level, zero-initialised [suffix_film]

    With ``fusion_dim``, ECAF and PSP see ``r`` projected to that width and their ``delta_r`` and ``c`` are projected
    back to ``d``. Without ECAF, ``Z`` is the context projected to ``d``; without PSP, ``delta_r = Z`` (broadcast over
    positions when it is not per-position). With every part off, the tokenizer is not built and the
    network computes exactly ``backbone(x)``; with the gate at its initial value it computes the same
    function as the backbone. When ``use_spa``, ``spectral_alignment = (s, S_g)`` is kept after each
    forward for :class:`~omnifm_monai.losses.OmniFMLoss`.

    Args:
        backbone: a MONAI network with a registered adapter (``ResNet``, ``BasicUNet``, ``VQANet``).
        spatial_dims: 2 or 3.
        in_channels: image channels.
        adapter: adapter class, instance or the class's dotted path; by default looked up from the backbone's
            class.
        spectral_dim: spectral token size ``d_s``.
        beta: low-pass ratio of the spectral window.
        tokenizer_grid: bins per axis of the resampled window.
        tokenizer_patch: patch edge of the tokenizer.
        tokenizer_tokens: spectral tokens per image ``m`` (patch tokens pooled to ``m``).
        tokenizer_standardize: standardise the spectral window per sample (drops its level, which tells
            contrasts apart: off by default).
        tokenizer_moments: add the image's intensity moments to the tokens (sees contrast polarity).
        bank_capacity: ``N_max`` prototypes.
        top_k: prototypes retrieved per image.
        exclude_own_site: retrieve only other sites' prototypes (the federation sets the bank's ``local_site``).
        modalities: modality tag names known to the bank.
        num_heads: heads of ECAF and PSP.
        prefix_tokens: prefix length.
        prompt_layers: shared transformer layers of PSP.
        suffix_tokens: private suffix tokens per site.
        private_gate: the output gate is the site's own (``private_gate``, never averaged: sites' gates
            take opposite signs, and an averaged gate stays near 0) instead of a shared ``gate``.
        private_norms: the backbone's normalisation layers are the site's own too (as in FedBN; ignored when
            every part is off, so the baselines' plain backbone keeps shared norms).
        suffix_film: FiLM from the suffix output at every decoder level, for adapters that have levels
            (``film_channels``; UNets). Ungated and zero-initialised.
        use_gskr, use_ecaf, use_prefix, use_suffix, use_spa: switch each part on or off.
        gate_init: initial ``alpha`` of the output gate (0: the backbone's function).
        fusion_dim: width at which ECAF and PSP work (``None``: the backbone's token width ``d``). Smaller than
            ``d``, the tokens are projected to it and ``delta_r`` and ``c`` back (``fusion_proj``): the attention and
            prompt weights, which every site uploads each round, shrink by about ``(d / fusion_dim)^2``.
        bank_keys: what an image's bank key is: ``"mean"``, its ``m`` spectral tokens averaged (``d_s`` floats), or
            ``"tokens"``, the ``m`` tokens side by side (``m * d_s`` floats: cosine of two keys = mean cosine of
            their tokens position by position, so where in the window a difference lies still counts);
            retrieved ``"tokens"`` prototypes join the context as their ``m`` tokens.

    What federated strategies use (no names to agree on): :attr:`PARTS` (the switches; all off builds the
    plain backbone, which the baselines train), :meth:`private_state_keys`, :meth:`head_state_keys`,
    :meth:`features` and ``bank`` (``None`` without GSKR).
    """

    #: constructor switches of OmniFM's parts
    PARTS: ClassVar[tuple[str, ...]] = ("use_gskr", "use_ecaf", "use_prefix", "use_suffix", "use_spa")

    def __init__(
        self,
        backbone: nn.Module,
        spatial_dims: int,
        in_channels: int,
        adapter: type | object | str | None = None,
        spectral_dim: int = 128,
        beta: float = 0.15,
        tokenizer_grid: int = 16,
        tokenizer_patch: int = 4,
        tokenizer_tokens: int = 4,
        tokenizer_standardize: bool = False,
        tokenizer_moments: bool = False,
        bank_capacity: int = 64,
        top_k: int = 8,
        exclude_own_site: bool = False,
        modalities: Sequence[str] = (),
        num_heads: int = 4,
        prefix_tokens: int = 4,
        prompt_layers: int = 1,
        suffix_tokens: int = 4,
        private_gate: bool = True,
        private_norms: bool = False,
        suffix_film: bool = True,
        use_gskr: bool = True,
        use_ecaf: bool = True,
        use_prefix: bool = True,
        use_suffix: bool = True,
        use_spa: bool = True,
        gate_init: float = 0.0,
        fusion_dim: int | None = None,
        bank_keys: str = "mean",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if isinstance(adapter, str):
            module, name = adapter.rsplit(".", 1)
            adapter, found = optional_import(module, name=name)
            if not found:
                raise ValueError(f"cannot import the adapter {adapter!r}.")
        adapter = adapter or adapter_for(backbone)
        self.adapter = adapter() if isinstance(adapter, type) else adapter
        if bank_keys not in ("mean", "tokens"):
            raise ValueError(f"bank_keys must be 'mean' or 'tokens', got {bank_keys!r}.")
        self.bank_keys = bank_keys
        token_dim = self.adapter.token_dim(backbone)
        dim = fusion_dim or token_dim  # the width ECAF and PSP work at
        self.use_spa = use_spa
        self.private_norms = private_norms
        fuses = use_ecaf or use_prefix or use_suffix
        self.fusion_proj = FusionProjection(token_dim, dim) if fuses and dim != token_dim else None
        self.tokenizer = (
            SpectralTokenizer(
                spatial_dims,
                in_channels,
                spectral_dim,
                beta,
                tokenizer_grid,
                tokenizer_patch,
                num_tokens=tokenizer_tokens,
                standardize=tokenizer_standardize,
                moments=tokenizer_moments,
            )
            if (fuses or use_gskr or use_spa)
            else None
        )
        self.bank = (
            SpectralKnowledgeBank(
                spectral_dim * (tokenizer_tokens if bank_keys == "tokens" else 1),
                bank_capacity,
                top_k,
                modalities,
                exclude_own_site=exclude_own_site,
            )
            if use_gskr
            else None
        )
        if self.bank is not None:  # set by NoveltyCalibration on validation data; 0 = not calibrated
            self.register_buffer("novelty_threshold", torch.zeros(()))
        self.ecaf = CrossAttentionFusion(dim, spectral_dim, num_heads) if use_ecaf else None
        self.context_proj = nn.Linear(spectral_dim, dim) if fuses and not use_ecaf else None
        self.prompt = (
            PrefixSuffixPrompt(
                dim,
                prefix_tokens,
                prompt_layers,
                num_heads,
                use_prefix=use_prefix,
                use_suffix=use_suffix,
                num_suffix_tokens=suffix_tokens,
            )
            if (use_prefix or use_suffix)
            else None
        )
        if (
            fuses
        ):  # registered as `private_gate` (kept by the site, see is_private) or `shared_gate` (averaged)
            self.add_module("private_gate" if private_gate else "shared_gate", ZeroGate(gate_init))
        film_channels = getattr(self.adapter, "film_channels", lambda _: [])(backbone)
        self.film = SuffixFiLM(dim, film_channels) if (suffix_film and use_suffix and film_channels) else None
        self.spectral_alignment: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def gate(self) -> ZeroGate | None:
        """The output gate (private or shared), ``None`` when nothing is fused."""
        return self._modules.get("private_gate", self._modules.get("shared_gate"))

    def parts(self) -> list[nn.Module]:
        """OmniFM's own modules around the backbone (the bank holds no parameters)."""
        names = (
            "tokenizer",
            "fusion_proj",
            "ecaf",
            "context_proj",
            "prompt",
            "film",
            "private_gate",
            "shared_gate",
        )
        return [m for m in (self._modules.get(n) for n in names) if m is not None]

    def parameter_groups(
        self, lr: float, parts_lr_scale: float = 1.0, weight_decay: float = 0.01
    ) -> list[dict]:
        """Optimiser groups: the backbone at ``lr`` with ``weight_decay``; OmniFM's parts (new, small, several
        zero-initialised) at ``lr * parts_lr_scale`` without weight decay, which would pull gates and FiLM maps
        back to the identity. Empty groups are left out (the plain backbone has one group)."""
        own = {id(p) for m in self.parts() for p in m.parameters()}
        backbone = [p for p in self.parameters() if id(p) not in own]
        parts = [p for p in self.parameters() if id(p) in own]
        groups = [
            {"params": backbone, "lr": lr, "weight_decay": weight_decay},
            {"params": parts, "lr": lr * parts_lr_scale, "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def spectral_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The spectral tokens ``s (B, m, d_s)`` of images ``x`` (what a site summarises for the bank)."""
        if self.tokenizer is None:
            raise RuntimeError("this OmniFM network has no spectral tokenizer (every part is off).")
        return self.tokenizer(x)

    def bank_key(self, tokens: torch.Tensor) -> torch.Tensor:
        """Spectral tokens ``(B, m, d_s)`` in the bank's key form, ``(B, d_s)`` or ``(B, m * d_s)`` (``bank_keys``)."""
        return tokens.flatten(1) if self.bank_keys == "tokens" else tokens.mean(1)

    def spectral_keys(self, x: torch.Tensor) -> torch.Tensor:
        """The bank keys of images ``x``: what a site's centroids summarise and what retrieval compares."""
        return self.bank_key(self.spectral_tokens(x))

    @torch.no_grad()
    def novelty(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`SpectralKnowledgeBank.novelty` of images ``x``, ``(B,)``: the out-of-distribution score."""
        if self.bank is None:
            raise RuntimeError(
                "this OmniFM network has no spectral knowledge bank to measure novelty against."
            )
        return self.bank.novelty(self.spectral_keys(x))

    def private_state_keys(self) -> set[str]:
        """Keys that never leave a site: the private suffix and gate, the bank (the server merges banks, never
        averages) and, with ``private_norms``, the backbone's normalisation layers."""
        keys = {k for k in self.state_dict() if is_private(k)}
        if self.private_norms and self.tokenizer is not None:
            norms = [m for m in self.backbone.modules() if isinstance(m, NORM_TYPES)]
            keys |= module_state_keys(self, norms)
        return keys | (module_state_keys(self, [self.bank]) if self.bank is not None else set())

    def head_state_keys(self) -> set[str]:
        """Keys of the backbone's task head (named by the adapter's ``head``)."""
        return module_state_keys(self, [getattr(self.backbone, h) for h in self.adapter.head])

    def features(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """The backbone's representation of ``x``: its tokens mean-pooled and flattened, ``(B, F)``."""
        tokens, _ = self.adapter.encode(self.backbone, x, *args)
        return tokens.mean(1).flatten(1)

    def _fuse(
        self, x: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, list | None]:
        self.spectral_alignment = None
        if self.tokenizer is None:
            return tokens, None, None
        s = self.tokenizer(x)
        if self.bank is not None:
            retrieved = self.bank.retrieve(self.bank_key(s))[0]
            if self.bank_keys == "tokens":  # (B, k, m * d_s) unit keys -> (B, k * m, d_s) unit tokens, like s
                retrieved = F.normalize(retrieved.reshape(s.shape[0], -1, s.shape[-1]), dim=-1)
        else:
            retrieved = s[:, :0].detach()
        if self.use_spa:
            self.spectral_alignment = (s, retrieved)
        if self.gate is None:
            return tokens, None, None
        context = torch.cat([s, retrieved], dim=1)
        r = tokens if self.fusion_proj is None else self.fusion_proj.inward(tokens)
        prior = self.ecaf(r, context) if self.ecaf is not None else self.context_proj(context)
        if self.prompt is not None:
            delta, suffix = self.prompt(r, prior)
        else:  # ECAF alone: Z is already per position
            delta, suffix = prior, None
        if delta.shape[1] != tokens.shape[1]:  # projected context without ECAF and PSP: broadcast its mean
            delta = delta.mean(1, keepdim=True).expand(-1, tokens.shape[1], -1)
        film = self.film(suffix) if self.film is not None and suffix is not None else None
        if self.fusion_proj is not None:
            delta = self.fusion_proj.outward(delta)
            suffix = self.fusion_proj.outward(suffix) if suffix is not None else None
        g = self.gate.value
        return self.gate(tokens, delta), (g * suffix if suffix is not None else None), film

    def forward(self, x: torch.Tensor, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """``x`` the image; further inputs (e.g. the VQA question) go to the backbone through its adapter."""
        tokens, state = self.adapter.encode(self.backbone, x, *args, **kwargs)
        tokens, suffix, film = self._fuse(x, tokens)
        return self.adapter.decode(self.backbone, tokens, state, suffix, film)


class FusionProjection(nn.Module):
    """Tokens of width ``token_dim`` into the fusion width ``dim`` (``inward``) and fused outputs back
    (``outward``): :class:`OmniFM` with ``fusion_dim``. Shared (averaged) like the fusion it serves."""

    def __init__(self, token_dim: int, dim: int) -> None:
        super().__init__()
        self.inward = nn.Linear(token_dim, dim)
        self.outward = nn.Linear(dim, token_dim)


def _fusion_adapter(adapter: type, fusion_level: int, max_fused_positions: int, omnifm: dict) -> None:
    """The wrappers' adapter at ``fusion_level``; with nothing fused (the baselines' plain backbone) the last
    level, where ``features`` reads the backbone's representation."""
    fuses = any(omnifm.get(part, True) for part in ("use_ecaf", "use_prefix", "use_suffix"))
    omnifm.setdefault("adapter", adapter(fusion_level if fuses else 4, max_fused_positions))


class OmniFMResNet(OmniFM):
    """OmniFM around a MONAI ``ResNet`` classifier (basic blocks); ``out_channels`` classes.

    ``(B, in_channels, *S) -> (B, out_channels)``. ``fusion_level`` is the stage whose positions OmniFM fuses
    (:class:`~omnifm_monai.networks.nets.adapters.ResNetAdapter`): 4, the last, has ``S / 32`` positions per
    axis (one at 32 x 32); 2 has 16x the positions at a quarter of the channels. ``max_fused_positions`` as for
    :class:`OmniFMUNet`. Further keyword arguments go to :class:`OmniFM`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        layers: Sequence[int] = (1, 1, 1, 1),
        fusion_level: int = 4,
        max_fused_positions: int = 64,
        **omnifm,
    ) -> None:
        backbone = ResNet(
            "basic",
            list(layers),
            list(channels),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            num_classes=out_channels,
        )
        _fusion_adapter(ResNetAdapter, fusion_level, max_fused_positions, omnifm)
        super().__init__(backbone, spatial_dims, in_channels, **omnifm)


class OmniFMUNet(OmniFM):
    """OmniFM around a MONAI ``BasicUNet`` (segmentation, super-resolution).

    ``(B, in_channels, *S) -> (B, out_channels, *S)``, ``S`` divisible by 16. ``fusion_level`` is the encoder
    level whose positions OmniFM fuses (:class:`~omnifm_monai.networks.nets.adapters.BasicUNetAdapter`): 4, the
    bottleneck, has ``S / 16`` positions (4 at 32x32) at the widest channels; 3 has 4x the positions at half
    the channels, so fusion reaches more of the image with smaller (cheaper to send) attention and prompt
    weights; ignored when nothing is fused. ``max_fused_positions`` keeps fusion's cost bounded at large inputs
    (a level with more positions is fused on its pooled grid, the change upsampled back; 64 = 8 x 8, all of
    level 2's positions at 32 x 32). ``residual`` adds the input to the output (``out_channels == in_channels``; image restoration
    learns the correction, the usual choice for super-resolution) and zero-initialises the last convolution,
    so the network starts as the identity; ``norm`` / ``act`` go to ``BasicUNet``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        norm: str | tuple | None = ("instance", {"affine": True}),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        residual: bool = False,
        fusion_level: int = 4,
        max_fused_positions: int = 64,
        **omnifm,
    ) -> None:
        if residual and in_channels != out_channels:
            raise ValueError(
                f"residual needs in_channels == out_channels, got {in_channels} and {out_channels}."
            )
        backbone = BasicUNet(
            spatial_dims, in_channels, out_channels, features=tuple(features), norm=norm, act=act
        )
        if residual:  # start as the identity: training can only add a correction the data supports
            nn.init.zeros_(backbone.final_conv.weight)
            nn.init.zeros_(backbone.final_conv.bias)
        _fusion_adapter(BasicUNetAdapter, fusion_level, max_fused_positions, omnifm)
        super().__init__(backbone, spatial_dims, in_channels, **omnifm)
        self.residual = residual

    def forward(self, x: torch.Tensor, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        out = super().forward(x, *args, **kwargs)
        return out + x if self.residual else out


class OmniFMVQA(OmniFM):
    """OmniFM around :class:`VQANet`: ``(image (B, C, *S), question (B, T)) -> (B, num_answers)``.

    ``fusion_level`` and ``max_fused_positions``: the stage of the image trunk whose positions OmniFM fuses, as
    for :class:`OmniFMResNet` (:class:`~omnifm_monai.networks.nets.adapters.VQANetAdapter`)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        vocab_size: int,
        num_answers: int,
        embed_dim: int = 128,
        channels: Sequence[int] = (16, 32, 64, 128),
        fusion_level: int = 4,
        max_fused_positions: int = 64,
        **omnifm,
    ) -> None:
        backbone = VQANet(spatial_dims, in_channels, vocab_size, num_answers, embed_dim, tuple(channels))
        _fusion_adapter(VQANetAdapter, fusion_level, max_fused_positions, omnifm)
        super().__init__(backbone, spatial_dims, in_channels, **omnifm)
