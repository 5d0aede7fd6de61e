"""Global Spectral Knowledge Retrieval (GSKR): a bank of spectral prototypes with top-k retrieval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpectralKnowledgeBank", "kmeans_centroids"]

BANK_FIELDS = ("keys", "site", "modality", "hits", "age")


def kmeans_centroids(
    tokens: torch.Tensor,
    num_centroids: int,
    iterations: int = 20,
    seed: int = 0,
    min_cluster_size: int = 1,
) -> torch.Tensor:
    """Unit-norm k-means (spherical) centroids of ``tokens (N, d)``: what a site uploads instead of its tokens.

    Deterministic for a fixed ``seed`` (k-means++ style seeding from a private generator). With
    ``min_cluster_size`` m > 1 every returned centroid is the mean of at least m tokens (at most N // m
    centroids; a smaller cluster is dissolved into its neighbours), so no uploaded centroid is one image's
    token. Returns ``(q, d)`` with ``q <= min(num_centroids, N // min_cluster_size)`` (at least 1).
    """
    if min_cluster_size < 1:
        raise ValueError(f"min_cluster_size must be >= 1, got {min_cluster_size}.")
    tokens = F.normalize(tokens.detach().float().reshape(-1, tokens.shape[-1]), dim=-1)
    q = max(1, min(num_centroids, tokens.shape[0] // min_cluster_size))
    gen = torch.Generator().manual_seed(seed)
    centroids = tokens[torch.randint(tokens.shape[0], (1,), generator=gen)]
    while centroids.shape[0] < q:  # k-means++: sample far points with probability ~ distance^2
        dist = (2 - 2 * tokens @ centroids.T).clamp_min(0).min(dim=1).values
        if dist.sum() <= 0:
            dist = torch.ones_like(dist)
        centroids = torch.cat([centroids, tokens[torch.multinomial(dist, 1, generator=gen)]])

    def lloyd(centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assign = (tokens @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, tokens)
        empty = sums.norm(dim=1) == 0
        return torch.where(empty[:, None], centroids, F.normalize(sums, dim=-1)), assign

    for _ in range(iterations):
        centroids, assign = lloyd(centroids)
    if min_cluster_size > 1:
        while True:
            assign = (tokens @ centroids.T).argmax(dim=1)
            sizes = torch.bincount(assign, minlength=len(centroids))
            if len(centroids) == 1 or sizes.min() >= min_cluster_size:
                break
            keep = torch.ones(len(centroids), dtype=torch.bool)
            keep[sizes.argmin()] = False  # dissolve the smallest cluster, re-fit the rest
            centroids, _ = lloyd(centroids[keep])
        if len(centroids) == 1:  # one cluster: the mean of every token
            centroids = F.normalize(tokens.mean(0, keepdim=True), dim=-1)
    return centroids


class SpectralKnowledgeBank(nn.Module):
    """Fixed-capacity bank of unit-norm spectral prototypes ``{key, site, modality, hits, age}``.

    Stored as buffers of size ``capacity`` with a validity mask, so the bank lives in the model's
    state dict with a constant shape. Federated exchange uses :meth:`to_tensors` / :meth:`load_tensors`
    (valid rows only, lossless); the server updates it with :meth:`merge`, never by averaging.

    Args:
        embed_dim: prototype size ``d_s``.
        capacity: ``N_max``.
        top_k: prototypes retrieved per image.
        modalities: names of the modality tags (a tag may be given by name or index).
        hit_decay: factor applied to hit counts at every merge.
        exclude_own_site: do not retrieve the entries of ``local_site``.
    """

    def __init__(
        self,
        embed_dim: int,
        capacity: int = 256,
        top_k: int = 8,
        modalities: Sequence[str] = (),
        hit_decay: float = 0.9,
        exclude_own_site: bool = False,
    ) -> None:
        super().__init__()
        if top_k < 1 or capacity < 1:
            raise ValueError(f"top_k and capacity must be >= 1, got top_k={top_k}, capacity={capacity}.")
        self.embed_dim, self.capacity, self.top_k = embed_dim, capacity, top_k
        self.modalities, self.hit_decay, self.exclude_own_site = list(modalities), hit_decay, exclude_own_site
        self.local_site = -1
        # True while a federation's server fills the bank (then SpectralBankRefresh leaves it alone)
        self.federated = False
        self.register_buffer("keys", torch.zeros(capacity, embed_dim))
        self.register_buffer("valid", torch.zeros(capacity, dtype=torch.bool))
        self.register_buffer("site", torch.full((capacity,), -1, dtype=torch.long))
        self.register_buffer("modality", torch.full((capacity,), -1, dtype=torch.long))
        self.register_buffer("hits", torch.zeros(capacity))
        self.register_buffer("age", torch.zeros(capacity, dtype=torch.long))

    def settings(self) -> dict:
        """The constructor arguments a server needs to keep a bank of the same shape and rules."""
        return {
            "embed_dim": self.embed_dim,
            "capacity": self.capacity,
            "modalities": list(self.modalities),
            "hit_decay": self.hit_decay,
        }

    def __len__(self) -> int:
        return int(self.valid.sum())

    def modality_index(self, modality: int | str) -> int:
        if isinstance(modality, str):
            if modality not in self.modalities:
                raise ValueError(f"unknown modality tag {modality!r}; the bank knows {self.modalities}.")
            return self.modalities.index(modality)
        return int(modality)

    # ---------------------------------------------------------------- retrieval (client side)
    def retrieve(self, queries: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k prototypes by cosine similarity, without gradient.

        ``queries (B, m, d)`` or ``(B, d)`` (multi-token queries are averaged) -> entries ``(B, k', d)`` and
        their slot indices ``(B, k')``, ``k' = min(k, available)``; ``k' = 0`` when nothing is available.
        In training mode the hit counts of the retrieved slots are incremented.
        """
        q = F.normalize((queries.mean(1) if queries.dim() == 3 else queries).detach(), dim=-1)
        available = self.valid.clone()
        if self.exclude_own_site:
            available &= self.site != self.local_site
        k = min(k or self.top_k, int(available.sum()))
        sims = (q @ self.keys.T).masked_fill(~available, float("-inf"))
        idx = sims.topk(k, dim=1).indices
        if self.training and k > 0:
            self.hits.index_add_(0, idx.flatten(), torch.ones(idx.numel(), device=self.hits.device))
        return self.keys[idx].detach(), idx

    @torch.no_grad()
    def novelty(self, queries: torch.Tensor) -> torch.Tensor:
        """``1 - cos`` of each query to its nearest valid prototype, ``(B,)`` in [0, 2]: how far an image's
        spectral summary lies from everything the federation has summarised (NaN while the bank is empty).
        ``queries (B, m, d)`` or ``(B, d)``, as for :meth:`retrieve`."""
        q = F.normalize((queries.mean(1) if queries.dim() == 3 else queries).float(), dim=-1)
        if not self.valid.any():
            return torch.full(q.shape[:1], float("nan"), device=q.device)
        return (1.0 - (q @ self.keys[self.valid].T).max(1).values).clamp(0.0, 2.0)

    # ---------------------------------------------------------------- exchange (lossless)
    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The valid entries as plain CPU tensors ``{keys, site, modality, hits, age}``."""
        return {name: getattr(self, name)[self.valid].detach().cpu().clone() for name in BANK_FIELDS}

    def load_tensors(self, entries: Mapping[str, torch.Tensor]) -> None:
        """Replace the bank by ``entries`` (the form of :meth:`to_tensors`); at most ``capacity`` rows."""
        n = int(entries["keys"].shape[0])
        if n > self.capacity:
            raise ValueError(f"{n} entries do not fit a bank of capacity {self.capacity}; prune first.")
        if entries["keys"].shape[1:] != (self.embed_dim,):
            raise ValueError(f"bank keys must be (N, {self.embed_dim}), got {tuple(entries['keys'].shape)}.")
        self.valid.zero_()
        self.site.fill_(-1)
        self.modality.fill_(-1)
        self.keys.zero_()
        self.hits.zero_()
        self.age.zero_()
        for name in BANK_FIELDS:
            getattr(self, name)[:n] = entries[name].to(getattr(self, name))
        self.valid[:n] = True

    # ---------------------------------------------------------------- upkeep (server side)
    def merge(self, uploads: Sequence[Mapping], hit_counts: torch.Tensor | None = None) -> None:
        """One round of bank upkeep.

        ``hit_counts (capacity,)`` (the clients' summed retrieval counts for this round) are added to the
        decayed counts; each upload ``{keys (Q, d), site, modality}`` replaces that site's previous
        entries (the tokenizer changed, so old prototypes are stale); new entries inherit the mean hit
        count of the entries they replace; then the bank is pruned to ``capacity``.
        """
        hits = self.hits * self.hit_decay + (hit_counts.to(self.hits) if hit_counts is not None else 0)
        rows = {name: getattr(self, name)[self.valid] for name in BANK_FIELDS}
        rows["hits"], rows["age"] = hits[self.valid], rows["age"] + 1
        for up in uploads:
            site, modality = int(up["site"]), self.modality_index(up["modality"])
            keys = F.normalize(up["keys"].detach().float().to(self.keys.device), dim=-1)
            if keys.dim() != 2 or keys.shape[1] != self.embed_dim:
                raise ValueError(
                    f"site {site} uploaded keys of shape {tuple(keys.shape)}, expected (Q, {self.embed_dim})."
                )
            old = rows["site"] == site
            inherited = rows["hits"][old].mean() if old.any() else torch.zeros((), device=keys.device)
            rows = {name: value[~old] for name, value in rows.items()}
            q = keys.shape[0]
            new = {
                "keys": keys,
                "site": torch.full((q,), site, dtype=torch.long, device=keys.device),
                "modality": torch.full((q,), modality, dtype=torch.long, device=keys.device),
                "hits": inherited.expand(q).clone(),
                "age": torch.zeros(q, dtype=torch.long, device=keys.device),
            }
            rows = {name: torch.cat([rows[name], new[name]]) for name in BANK_FIELDS}
        keep = self.prune_indices(rows["modality"], rows["hits"], rows["age"], self.capacity, rows["site"])
        self.load_tensors({name: value[keep] for name, value in rows.items()})

    @staticmethod
    def prune_indices(
        modality: torch.Tensor,
        hits: torch.Tensor,
        age: torch.Tensor,
        capacity: int,
        site: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Indices kept when ``N > capacity``: each modality keeps a quota ``capacity // M`` (or all it has,
        if fewer); surplus is evicted from the most over-represented modality: fewest hits first, then
        oldest, then from the site with the most entries of that modality (so sites share a modality's
        quota). Kept indices are returned in their original order."""
        n = modality.shape[0]
        if n <= capacity:
            return torch.arange(n, device=modality.device)
        site = torch.zeros_like(modality) if site is None else site
        tags = modality.unique()
        quota = max(1, capacity // len(tags))
        kept = torch.ones(n, dtype=torch.bool, device=modality.device)
        while int(kept.sum()) > capacity:
            counts = {int(t): int((kept & (modality == t)).sum()) for t in tags}
            over = {t: c for t, c in counts.items() if c > quota} or counts
            tag = max(over, key=lambda t: (over[t], -t))
            candidates = (kept & (modality == tag)).nonzero().flatten().tolist()
            per_site = {
                int(s): int((kept & (modality == tag) & (site == s)).sum()) for s in site[candidates].unique()
            }
            victim = min(candidates, key=lambda i: (float(hits[i]), -int(age[i]), -per_site[int(site[i])], i))
            kept[victim] = False
        return kept.nonzero().flatten()
