"""OmniFM's strategy: shared weights averaged, the spectral knowledge bank merged on the server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.utils import eval_mode

from omnifm_monai.handlers import site_centroids
from omnifm_monai.losses import token_spread
from omnifm_monai.networks.blocks import SpectralKnowledgeBank
from omnifm_monai.networks.nets.omnifm import module_state_keys

from .base import Strategy, tensor_problem, weighted_average

__all__ = ["OmniFMStrategy"]


class OmniFMStrategy(Strategy):
    """OmniFM: weighted average of the shared weights (the private suffix, gate and bank excluded) and the
    spectral knowledge bank merged and pruned on the server (never averaged).

    Each update's ``extra`` carries ``bank_keys (Q, d)`` (k-means centroids of the site's spectral tokens,
    computed at the start of the round with the tokenizer the server just aggregated, so every site's keys
    and every query come from one tokenizer), ``modality`` and ``bank_hits`` (retrievals per bank slot this
    round); ``min_images_per_centroid`` keeps any centroid from being one image's token. ``sites`` fixes the
    site ids; the bank's size, dimension, modalities and hit decay are the network's
    (:meth:`resolve_options`).

    Onboarding a site that never trained (``onboarding``): it has no suffix, gate or norms of its own, and
    starting from their initial values breaks a network trained with personal ones. Sites therefore also
    send their private parameters (the bank excluded) as ``personal``; the server keeps only their
    sample-weighted mean and sends it with the model, and a site that never trained evaluates with it
    (the rule for its suffix: the federation's mean suffix). Trained sites never load it.
    """

    name = "omnifm"
    plain_backbone = False

    def __init__(
        self,
        sites: Sequence[str] = (),
        embed_dim: int = 128,
        capacity: int = 256,
        modalities: Sequence[str] = (),
        num_centroids: int = 16,
        hit_decay: float = 0.9,
        min_images_per_centroid: int = 4,
        onboarding: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(
            num_centroids=num_centroids,
            min_images_per_centroid=min_images_per_centroid,
            onboarding=onboarding,
            **options,
        )
        self.num_centroids, self.min_images_per_centroid = num_centroids, min_images_per_centroid
        self.onboarding = onboarding
        self.sites, self.bank_config = (
            list(sites),
            dict(embed_dim=embed_dim, capacity=capacity, modalities=list(modalities), hit_decay=hit_decay),
        )

    @classmethod
    def resolve_options(cls, network, sites):
        bank = getattr(network, "bank", None)
        return {"sites": list(sites), **(bank.settings() if bank is not None else {})}

    def _personal_keys(self, ctx) -> list[str]:
        """The private keys that make a site's model its own (the bank is a copy of the server's)."""
        bank = getattr(ctx.network, "bank", None)
        bank_keys = module_state_keys(ctx.network, [bank]) if bank is not None else set()
        return sorted(k for k in ctx.private_keys if k not in bank_keys)

    def site_id(self, site: str) -> int:
        if site not in self.sites:
            self.sites.append(site)
        return self.sites.index(site)

    # ---------------------------------------------------------------- server
    def _bank(self, entries: Mapping[str, torch.Tensor] | None) -> SpectralKnowledgeBank:
        bank = SpectralKnowledgeBank(**self.bank_config)
        if entries:
            bank.load_tensors(entries)
        return bank

    def init_state(self, global_weights):
        return {"bank": self._bank(None).to_tensors()}

    def server_payload(self, state):
        return {
            "bank": state["bank"],
            **({"onboarding": state["onboarding"]} if "onboarding" in state else {}),
        }

    def validate_extra(self, update, state):
        extra, dim = update.extra, self.bank_config["embed_dim"]
        problem = None
        for key, value in (extra.get("personal") or {}).items():  # floating weights, integer norm counters
            if not isinstance(value, torch.Tensor):
                problem = problem or f"personal[{key}] is a {type(value).__name__}, not a tensor"
            elif value.is_floating_point():
                problem = problem or tensor_problem(f"personal[{key}]", value)
        if problem or extra.get("bank_keys") is None:
            return problem
        problem = tensor_problem("bank_keys", extra["bank_keys"], (None, dim))
        if problem is None and len(extra["bank_keys"]) == 0:
            problem = "bank_keys is empty"
        modality, known = extra.get("modality"), self.bank_config["modalities"]
        if problem is None and not (
            (isinstance(modality, str) and modality in known)
            or (
                isinstance(modality, int)
                and not isinstance(modality, bool)
                and 0 <= modality < max(len(known), 1)
            )
        ):
            problem = f"unknown modality {modality!r} (the bank knows {known})"
        hits = extra.get("bank_hits")
        if problem is None and hits is not None:
            problem = tensor_problem(
                "bank_hits", hits.float() if isinstance(hits, torch.Tensor) else hits, (None,)
            )
        return problem

    def aggregate(self, global_weights, updates, state):
        new, _ = super().aggregate(global_weights, updates, state)
        bank = self._bank(state["bank"])
        hits = [u.extra["bank_hits"] for u in updates if u.extra.get("bank_hits") is not None]
        # the clients' hit counts index the bank they received: the server's bank before this merge
        hit_counts = torch.zeros(bank.capacity)
        for h in hits:
            hit_counts[: min(len(h), bank.capacity)] += h[: bank.capacity].float()
        uploads = [
            {"keys": u.extra["bank_keys"], "site": self.site_id(u.site), "modality": u.extra["modality"]}
            for u in updates
            if u.extra.get("bank_keys") is not None
        ]
        bank.merge(uploads, hit_counts=hit_counts)
        out = {**state, "bank": bank.to_tensors()}
        personal = [(u.extra["personal"], u.num_samples) for u in updates if u.extra.get("personal")]
        if personal:
            out["onboarding"] = weighted_average(*zip(*personal, strict=True))
        return new, out

    def artifacts(self, state):
        return {"bank.pt": state["bank"]}

    # ---------------------------------------------------------------- client
    def setup_site(self, ctx):
        if getattr(ctx.network, "bank", None) is not None:
            ctx.network.bank.federated = True  # the server fills the bank; the standalone refresh stands down

    def _use_payload_bank(self, ctx, payload) -> None:
        bank = getattr(ctx.network, "bank", None)
        if bank is not None:
            bank.local_site = self.site_id(ctx.site)
            if payload.get("bank") is not None:
                bank.load_tensors(payload["bank"])

    def before_training(self, ctx):
        ctx.state["trained"] = True
        self._use_payload_bank(ctx, ctx.payload)
        if getattr(ctx.network, "bank", None) is not None:
            ctx.state["hits_at_start"] = ctx.network.bank.hits.clone()
            # the keys this round uploads: from the aggregated tokenizer, the one every site starts from
            loader = ctx.workflow.bank_dataloader or ctx.trainer.data_loader
            ctx.runtime["bank_keys"] = site_centroids(
                ctx.network,
                loader,
                self.num_centroids,
                device=ctx.device,
                min_images_per_centroid=self.min_images_per_centroid,
            )

    def prepare_evaluation(self, ctx, payload):
        self._use_payload_bank(ctx, payload)  # evaluate with the bank the server just merged
        if self.onboarding and not ctx.state.get("trained") and payload.get("onboarding"):
            ctx.load(payload["onboarding"])  # a site that never trained: the federation's mean personal state

    def upload(self, ctx, local, iterations):
        bank = getattr(ctx.network, "bank", None)
        if bank is None:
            return {}
        start = ctx.state.get("hits_at_start", torch.zeros_like(bank.hits))
        state = ctx.network.state_dict()
        personal = (
            {k: state[k].detach().cpu().clone() for k in self._personal_keys(ctx)} if self.onboarding else {}
        )
        return {
            "bank_keys": ctx.runtime["bank_keys"],
            "modality": ctx.workflow.datalist_meta["modality"],
            "bank_hits": (bank.hits - start)[: len(bank)].cpu(),
            **({"personal": personal} if personal else {}),
        }

    @torch.no_grad()
    def diagnostics(self, ctx):
        """``gate`` (tanh of the output gate), ``token_spread`` (1 - mean pairwise cosine of the site's spectral
        tokens: 0 means one token for every image), ``own_modality_share`` (retrieved prototypes of the site's
        own modality) and ``bank_size``."""
        network, out = ctx.network, {}
        if getattr(network, "gate", None) is not None:
            out["gate"] = float(network.gate.value.mean())
        if getattr(network, "tokenizer", None) is None:
            return out
        loader = ctx.workflow.bank_dataloader or ctx.trainer.data_loader
        with eval_mode(network):  # eval: retrieval counts no hits
            tokens = torch.cat([network.spectral_tokens(b["image"].to(ctx.device)) for b in loader])
            if len(tokens) > 1:
                out["token_spread"] = float(token_spread(tokens.mean(1)))
            bank = getattr(network, "bank", None)
            if bank is not None:
                out["bank_size"] = float(len(bank))
                _, idx = bank.retrieve(network.bank_key(tokens))
                if idx.numel():
                    own = bank.modality_index(ctx.workflow.datalist_meta["modality"])
                    out["own_modality_share"] = float((bank.modality[idx] == own).float().mean())
        return out
