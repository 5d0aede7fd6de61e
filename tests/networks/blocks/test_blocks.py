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
