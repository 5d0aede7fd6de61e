"""OmniFM's strategy: shared weights averaged, the spectral knowledge bank merged on the server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.utils import eval_mode

from omnifm_monai.handlers import site_centroids
from omnifm_monai.networks.blocks import SpectralKnowledgeBank

from .base import Strategy

__all__ = ["OmniFMStrategy"]


class OmniFMStrategy(Strategy):
    """OmniFM: weighted average of the shared weights (the private suffix and the bank excluded) and the
    spectral knowledge bank merged and pruned on the server (never averaged).

    Each update's ``extra`` carries ``bank_keys (Q, d)`` (k-means centroids of the site's spectral tokens),
    ``modality`` and ``bank_hits`` (retrievals per bank slot this round). ``sites`` fixes the site ids; the
    bank's size, dimension, modalities and hit decay are the network's (:meth:`resolve_options`).
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
        **options: Any,
    ) -> None:
        super().__init__(num_centroids=num_centroids, **options)
        self.num_centroids = num_centroids
        self.sites, self.bank_config = (
            list(sites),
            dict(embed_dim=embed_dim, capacity=capacity, modalities=list(modalities), hit_decay=hit_decay),
        )

    @classmethod
    def resolve_options(cls, network, sites):
        bank = getattr(network, "bank", None)
        return {"sites": list(sites), **(bank.settings() if bank is not None else {})}

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
        return {"bank": state["bank"]}

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
        return new, {**state, "bank": bank.to_tensors()}

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
        self._use_payload_bank(ctx, ctx.payload)
        if getattr(ctx.network, "bank", None) is not None:
            ctx.state["hits_at_start"] = ctx.network.bank.hits.clone()

    def prepare_evaluation(self, ctx, payload):
        self._use_payload_bank(ctx, payload)  # evaluate with the bank the server just merged

    def upload(self, ctx, local, iterations):
        bank = getattr(ctx.network, "bank", None)
        if bank is None:
            return {}
        loader = ctx.workflow.bank_dataloader or ctx.trainer.data_loader
        start = ctx.state.get("hits_at_start", torch.zeros_like(bank.hits))
        return {
            "bank_keys": site_centroids(ctx.network, loader, self.num_centroids, device=ctx.device),
            "modality": ctx.workflow.datalist_meta["modality"],
            "bank_hits": (bank.hits - start)[: len(bank)].cpu(),
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
            tokens = torch.cat([network.spectral_tokens(b["image"].to(ctx.device)).mean(1) for b in loader])
            unit = F.normalize(tokens, dim=-1)
            n = len(unit)
            if n > 1:
                cosine = (unit @ unit.T).sum() - n  # off-diagonal pairs
                out["token_spread"] = float(1 - cosine / (n * (n - 1)))
            bank = getattr(network, "bank", None)
            if bank is not None:
                out["bank_size"] = float(len(bank))
                _, idx = bank.retrieve(tokens)
                if idx.numel():
                    own = bank.modality_index(ctx.workflow.datalist_meta["modality"])
                    out["own_modality_share"] = float((bank.modality[idx] == own).float().mean())
        return out
