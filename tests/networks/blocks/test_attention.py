"""The lean attention blocks compute MONAI's blocks' values and gradients, to the last bit, from the same weights."""

import copy

import pytest
import torch
from monai.networks.blocks import CrossAttentionBlock, TransformerBlock

from omnifm_monai.networks import OmniFMVQA
from omnifm_monai.networks.blocks import CrossAttention, TransformerLayer, multi_head_attention


def _values_and_grads(module, *inputs):
    out = module(*inputs)
    wrt = [x for x in inputs if x.requires_grad] + list(module.parameters())
    grads = torch.autograd.grad(out.square().sum(), wrt, allow_unused=True)
    return out, [g for g in grads if g is not None]


def _same_as_monai(lean, reference, *shapes):
    lean.load_state_dict(reference.state_dict())  # the same keys: checkpoints load either way
    inputs = [torch.randn(*s, requires_grad=True) for s in shapes]
    out, grads = _values_and_grads(lean, *inputs)
    ref_out, ref_grads = _values_and_grads(reference, *inputs)
    assert torch.equal(out, ref_out)
    assert len(grads) == len(ref_grads) and all(
        torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True)
    )


# (batch, tokens, context tokens, width, heads): OmniFM's fusion and prompt sizes, and odd ones
SHAPES = [(8, 64, 12, 32, 4), (16, 72, 72, 32, 4), (2, 5, 3, 64, 8), (3, 4, 64, 128, 4), (1, 1, 1, 16, 1)]


@pytest.mark.parametrize("b,t,s,d,h", SHAPES)
def test_cross_attention_is_monais_block(b, t, s, d, h):
    torch.manual_seed(0)
    _same_as_monai(CrossAttention(d, h), CrossAttentionBlock(d, h), (b, t, d), (b, s, d))
    _same_as_monai(
        CrossAttention(d, h), CrossAttentionBlock(d, h), (b, t, d)
    )  # self-attention without context


@pytest.mark.parametrize("b,t,s,d,h", SHAPES)
@pytest.mark.parametrize("combined", [True, False])
def test_transformer_layer_is_monais_block(b, t, s, d, h, combined):
    torch.manual_seed(0)
    kwargs = dict(qkv_bias=True, use_combined_linear=combined)
    _same_as_monai(
        TransformerLayer(d, 2 * d, h, **kwargs), TransformerBlock(d, 2 * d, h, **kwargs), (b, t, d)
    )


def test_options_outside_the_lean_path_take_monais_forward():
    torch.manual_seed(0)
    x, context = torch.randn(2, 6, 16), torch.randn(2, 3, 16)
    for lean, ref, inputs in [
        (CrossAttention(16, 2, dropout_rate=0.5), CrossAttentionBlock(16, 2, dropout_rate=0.5), (x, context)),
        (TransformerLayer(16, 32, 2, dropout_rate=0.5), TransformerBlock(16, 32, 2, dropout_rate=0.5), (x,)),
        (
            TransformerLayer(16, 32, 2, causal=True, sequence_length=6),
            TransformerBlock(16, 32, 2, causal=True, sequence_length=6),
            (x,),
        ),  # fmt: skip
    ]:
        lean.load_state_dict(ref.state_dict())
        torch.manual_seed(1)
        out = lean(*inputs)
        torch.manual_seed(1)  # the same dropout masks
        assert torch.equal(out, ref(*inputs))
    causal = TransformerLayer(16, 32, 2, causal=True, sequence_length=6)
    plain = TransformerLayer(16, 32, 2)
    plain.load_state_dict(causal.state_dict(), strict=False)
    assert not torch.allclose(causal(x), plain(x))  # the mask was applied, not skipped


def test_multi_head_attention_matches_a_per_head_reference():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 12), torch.randn(2, 7, 12), torch.randn(2, 7, 12)
    out = multi_head_attention(q, k, v, num_heads=3, scale=0.5)
    for head in range(3):
        cols = slice(4 * head, 4 * head + 4)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) * 0.5, dim=-1)
        assert torch.allclose(out[..., cols], weights @ v[..., cols], atol=1e-6)


def test_omnifm_computes_what_it_computed_with_monais_blocks():
    torch.manual_seed(0)
    net = OmniFMVQA(
        2, 1, vocab_size=20, num_answers=5, channels=(8, 16, 32, 64), fusion_level=2, spectral_dim=16
    )
    net.gate.alpha.data.fill_(0.5)  # open: the fused path reaches the output
    monai_net = copy.deepcopy(net)
    swapped = 0
    for module in monai_net.modules():
        if type(module) is CrossAttention:
            module.__class__, swapped = CrossAttentionBlock, swapped + 1
        elif type(module) is TransformerLayer:
            module.__class__, swapped = TransformerBlock, swapped + 1
    assert swapped == 3  # ECAF, the prefix's pooling, the prompt's layer
    image, question = torch.rand(4, 1, 64, 64), torch.randint(1, 20, (4, 6))
    torch.manual_seed(1)  # the backbone's dropout draws the same masks
    out, grads = _values_and_grads(net, image, question)
    torch.manual_seed(1)
    ref_out, ref_grads = _values_and_grads(monai_net, image, question)
    assert torch.equal(out, ref_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))
