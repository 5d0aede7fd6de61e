import pytest
import torch
import torch.nn.functional as F

from omnifm_monai.networks.blocks import SpectralKnowledgeBank, kmeans_centroids


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _filled_bank(capacity=64, d=16, sites=4, q=8):
    bank = SpectralKnowledgeBank(d, capacity=capacity, top_k=5, modalities=["T1", "T2", "CT"])
    bank.merge([{"keys": _unit(q, d, i), "site": i, "modality": i % 3} for i in range(sites)])
    return bank


def test_retrieval_equals_brute_force_top_k():
    bank = _filled_bank()
    queries = _unit(7, 16, 100)
    entries, idx = bank.eval().retrieve(queries)
    sims = queries @ bank.keys[bank.valid].T
    expected = sims.topk(5, dim=1).indices
    valid_slots = bank.valid.nonzero().flatten()
    assert torch.equal(idx, valid_slots[expected])
    assert torch.allclose(entries, bank.keys[valid_slots[expected]])
    assert not entries.requires_grad


def test_retrieval_counts_hits_only_in_training_and_excludes_own_site():
    bank = _filled_bank()
    q = _unit(3, 16, 5)
    bank.eval().retrieve(q)
    assert bank.hits[bank.valid].sum() == 0  # merge starts new entries at 0 hits
    bank.train().retrieve(q)
    assert bank.hits.sum() == 3 * 5
    bank.exclude_own_site, bank.local_site = True, 2
    _, idx = bank.retrieve(_unit(20, 16, 6))
    assert not (bank.site[idx] == 2).any()


def test_empty_bank_retrieves_nothing():
    bank = SpectralKnowledgeBank(8, capacity=4, top_k=3)
    entries, idx = bank.retrieve(_unit(2, 8, 0))
    assert entries.shape == (2, 0, 8) and idx.shape == (2, 0)


def test_to_from_tensors_is_lossless():
    bank = _filled_bank()
    bank.train().retrieve(_unit(9, 16, 1))  # non-trivial hit counts
    exported = bank.to_tensors()
    other = SpectralKnowledgeBank(16, capacity=64, modalities=["T1", "T2", "CT"])
    other.load_tensors(exported)
    for name, value in other.to_tensors().items():
        assert torch.equal(value, exported[name]), name
    assert len(other) == len(bank) == 32


def test_pruning_keeps_each_modality_quota():
    # 6 sites, modality 0 uploads far more than the others
    bank = SpectralKnowledgeBank(8, capacity=12, modalities=["a", "b", "c"])
    uploads = [{"keys": _unit(10, 8, i), "site": i, "modality": "a"} for i in range(4)]
    uploads += [
        {"keys": _unit(3, 8, 10), "site": 10, "modality": "b"},
        {"keys": _unit(6, 8, 11), "site": 11, "modality": "c"},
    ]
    bank.merge(uploads)
    counts = {m: int((bank.modality[bank.valid] == m).sum()) for m in range(3)}
    assert len(bank) == 12
    quota = 12 // 3
    assert counts[1] == 3  # under quota: keeps everything it has
    assert counts[2] >= quota and counts[0] >= quota
    assert sum(counts.values()) == 12


def test_pruning_evicts_fewest_hits_then_oldest():
    modality = torch.zeros(5, dtype=torch.long)
    hits = torch.tensor([5.0, 0.0, 1.0, 0.0, 9.0])
    age = torch.tensor([0, 1, 0, 3, 0])
    keep = SpectralKnowledgeBank.prune_indices(modality, hits, age, capacity=3)
    assert keep.tolist() == [0, 2, 4]  # entries 1 and 3 have no hits; 3 is older and goes first, then 1


def test_merge_refreshes_a_sites_entries():
    bank = _filled_bank()
    new = _unit(4, 16, 42)
    bank.merge([{"keys": new, "site": 1, "modality": 1}])
    mine = bank.valid & (bank.site == 1)
    assert int(mine.sum()) == 4
    assert torch.allclose(bank.keys[mine], new)
    assert (bank.age[bank.valid & (bank.site != 1)] == 1).all()


def test_merge_rejects_bad_uploads():
    bank = _filled_bank()
    with pytest.raises(ValueError, match="unknown modality"):
        bank.merge([{"keys": _unit(2, 16, 0), "site": 0, "modality": "PET"}])
    with pytest.raises(ValueError, match="expected"):
        bank.merge([{"keys": _unit(2, 15, 0), "site": 0, "modality": 0}])


def test_kmeans_centroids_recover_separated_clusters():
    centres = torch.eye(4, 16)
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([c + 0.05 * torch.randn(30, 16, generator=gen) for c in centres])
    found = kmeans_centroids(points, 4, seed=1)
    assert found.shape == (4, 16)
    assert torch.allclose(found.norm(dim=1), torch.ones(4), atol=1e-5)
    # every true centre has a centroid within a small angle
    assert ((centres @ found.T).max(dim=1).values > 0.98).all()
    assert torch.equal(found, kmeans_centroids(points, 4, seed=1))
    assert kmeans_centroids(points[:3], 8).shape == (3, 16)


def test_pruning_shares_a_modalitys_quota_between_its_sites():
    modality = torch.zeros(12, dtype=torch.long)
    site = torch.tensor([0] * 6 + [1] * 6)
    keep = SpectralKnowledgeBank.prune_indices(
        modality, torch.zeros(12), torch.zeros(12, dtype=torch.long), 6, site
    )
    assert sorted(site[keep].tolist()) == [0, 0, 0, 1, 1, 1]


def test_no_centroid_is_one_images_token_with_a_minimum_cluster_size():
    torch.manual_seed(0)
    tokens = F.normalize(torch.randn(16, 8), dim=-1)
    plain = kmeans_centroids(tokens, 16)
    assert ((plain @ tokens.T) > 1 - 1e-6).any(1).all()  # without a minimum, each is one image's token
    for m in (2, 3, 5):
        centroids = kmeans_centroids(tokens, 16, min_cluster_size=m)
        assert 1 <= len(centroids) <= 16 // m
        assign = (tokens @ centroids.T).argmax(1)
        assert torch.bincount(assign, minlength=len(centroids)).min() >= m
        assert (centroids @ tokens.T).max() < 1 - 1e-4  # none equals an image's token
    assert kmeans_centroids(tokens[:3], 16, min_cluster_size=4).shape == (
        1,
        8,
    )  # fewer images than m: one mean
    with pytest.raises(ValueError, match="min_cluster_size"):
        kmeans_centroids(tokens, 4, min_cluster_size=0)


def test_retrieval_returns_the_querys_own_modality_well_above_chance(reference_slices):
    """Each site uploads centroids (2 images or more each) of the tokens of half its slices from the default
    tokenizer at initialisation; each of its other slices retrieves top-2 of the bank: most of what it gets is
    its own modality's (T1, T2w, CT), chance being the share of each modality in the bank."""
    from omnifm_monai.networks.blocks import SpectralTokenizer

    images, labels = reference_slices
    shares, chances = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        tok = SpectralTokenizer(2, 1, 128, beta=0.15, num_tokens=4, standardize=False)  # OmniFM's defaults
        with torch.no_grad():
            tokens = tok(images).mean(1)
        bank = SpectralKnowledgeBank(128, capacity=64, top_k=2, modalities=["a", "b", "c"])
        train = torch.arange(len(images)) % 2 == 0  # centroids from half of each site, queries from the other
        bank.merge(
            [
                {
                    "keys": kmeans_centroids(tokens[train & (labels == s)], 16, min_cluster_size=2),
                    "site": s,
                    "modality": s,
                }
                for s in labels.unique().tolist()
            ]
        )
        _, idx = bank.retrieve(tokens[~train])
        own = bank.modality[idx] == labels[~train, None]
        shares.append(float(own.float().mean()))
        chances.append(
            float(sum((bank.modality[bank.valid] == s).float().mean() ** 2 for s in labels.unique()))
        )
    assert sum(shares) / 3 >= 2 * sum(chances) / 3, (shares, chances)
