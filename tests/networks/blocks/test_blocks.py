import pytest
import torch

from omnifm_monai.networks.blocks import (
    CrossAttentionFusion,
    PrefixSuffixPrompt,
    SpectralTokenizer,
    ZeroGate,
    is_private,
)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (3, 2, 64, 48)), (3, (2, 1, 32, 32, 24))])
def test_tokenizer_shapes_and_unit_norm(spatial_dims, shape):
    tok = SpectralTokenizer(spatial_dims, shape[1], embed_dim=32, grid_size=8, patch_size=4, num_tokens=2)
    s = tok(torch.rand(shape))
    assert s.shape == (shape[0], 2, 32)
    assert torch.allclose(s.norm(dim=-1), torch.ones(shape[0], 2), atol=1e-5)


def test_tokenizer_depends_on_low_frequencies_only():
    # adding a pure high-frequency pattern outside the window leaves the token unchanged
    tok = SpectralTokenizer(2, 1, embed_dim=16, beta=0.05, grid_size=8, patch_size=4)
    x = torch.rand(1, 1, 64, 64)
    checker = torch.ones(64, 64)
    checker[::2] *= -1
    checker[:, ::2] *= -1  # energy only at the Nyquist corner
    assert torch.allclose(tok(x), tok(x + 0.3 * checker), atol=1e-5)
    assert not torch.allclose(tok(x), tok(x.flip(-1).transpose(-1, -2) ** 2), atol=1e-3)


def test_tokenizer_size_independent():
    tok = SpectralTokenizer(2, 1, embed_dim=16, grid_size=8, patch_size=4)
    assert tok(torch.rand(2, 1, 64, 64)).shape == tok(torch.rand(2, 1, 96, 80)).shape


def test_zero_gate_is_identity_at_init():
    gate = ZeroGate()
    x, delta = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    assert torch.equal(gate(x, delta), x)
    gate.alpha.data.fill_(0.5)
    assert torch.allclose(gate(x, delta), x + torch.tanh(torch.tensor(0.5)) * delta)


def test_cross_attention_fusion_shape_and_dependence_on_context():
    ecaf = CrossAttentionFusion(32, 16, num_heads=4)
    r, ctx = torch.randn(2, 10, 32), torch.randn(2, 3, 16)
    z = ecaf(r, ctx)
    assert z.shape == (2, 10, 32)
    assert not torch.allclose(z, ecaf(r, torch.randn(2, 3, 16)))
    with pytest.raises(ValueError, match="divisible"):
        CrossAttentionFusion(30, 16, num_heads=4)


@pytest.mark.parametrize("use_prefix,use_suffix", [(True, True), (True, False), (False, True)])
def test_prompt_shapes(use_prefix, use_suffix):
    psp = PrefixSuffixPrompt(
        32, num_prefix_tokens=3, num_heads=4, use_prefix=use_prefix, use_suffix=use_suffix
    )
    r, z = torch.randn(2, 10, 32), torch.randn(2, 10, 32)
    delta, c = psp(r, z)
    assert delta.shape == r.shape
    assert (c is not None) == use_suffix and (c is None or c.shape == (2, 32))


def test_private_suffix_is_found_by_the_name_rule():
    psp = PrefixSuffixPrompt(16, num_heads=4)
    private = [n for n, _ in psp.named_parameters() if is_private(n)]
    assert private == ["private_suffix"]
    assert is_private("prompt.private_suffix") and not is_private("prompt.prefix_queries")
    assert not is_private("backbone.layer1.not_private_suffix")


def _nearest_centroid_accuracy(tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out nearest-centroid (cosine) accuracy of predicting the site from the token."""
    unit = torch.nn.functional.normalize(tokens.flatten(1), dim=-1)
    correct = 0
    for i in range(len(unit)):
        rest = torch.arange(len(unit)) != i
        centroids = torch.stack([unit[rest & (labels == c)].mean(0) for c in range(int(labels.max()) + 1)])
        correct += int((torch.nn.functional.normalize(centroids, dim=-1) @ unit[i]).argmax() == labels[i])
    return correct / len(unit)


def test_unstandardised_patch_tokens_tell_the_sites_apart(reference_slices):
    """At initialisation, the window's level and several patch tokens carry what tells T1, T2w and CT apart;
    per-sample standardisation pooled to one token loses most of it."""
    images, labels = reference_slices
    accuracy = {}
    for standardize, tokens in ((True, 1), (False, 4)):
        runs = []
        for seed in range(3):
            torch.manual_seed(seed)
            tok = SpectralTokenizer(2, 1, 128, beta=0.15, num_tokens=tokens, standardize=standardize)
            with torch.no_grad():
                runs.append(_nearest_centroid_accuracy(tok(images), labels))
        accuracy[standardize] = sum(runs) / len(runs)
    chance = 1 / 3
    assert accuracy[False] >= 0.8, accuracy
    assert accuracy[False] > accuracy[True] + 0.1, accuracy
    assert accuracy[True] > chance - 0.1  # (for the record: near chance)


def test_intensity_moments_see_contrast_polarity_and_join_the_token_from_zero():
    x = torch.rand(4, 1, 32, 32) ** 3  # right-skewed, as a T2-like image with few bright pixels
    moments = SpectralTokenizer.intensity_moments(x)
    inverted = SpectralTokenizer.intensity_moments(1 - x)
    assert torch.allclose(inverted[:, 2], -moments[:, 2], atol=1e-4)  # skewness flips with the polarity
    assert torch.allclose(inverted[:, 1], moments[:, 1], atol=1e-5) and (moments[:, 2] > 0.5).all()
    torch.manual_seed(0)
    plain = SpectralTokenizer(2, 1, 32, grid_size=8, patch_size=4)
    torch.manual_seed(0)
    with_moments = SpectralTokenizer(2, 1, 32, grid_size=8, patch_size=4, moments=True)
    assert torch.equal(plain(x), with_moments(x))  # zero-initialised: the same token at first
    with_moments.moments.weight.data.normal_()
    assert not torch.allclose(with_moments(x), with_moments(1 - x), atol=1e-3)
