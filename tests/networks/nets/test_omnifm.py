import pytest
import torch
from monai.networks.nets import BasicUNet, ResNet

from omnifm_monai.networks import OmniFM, OmniFMResNet, OmniFMUNet, OmniFMVQA, VQANet, is_private
from omnifm_monai.networks.blocks import kmeans_centroids

ALL_OFF = dict(use_gskr=False, use_ecaf=False, use_prefix=False, use_suffix=False, use_spa=False)
SMALL = dict(spectral_dim=32, tokenizer_grid=8, bank_capacity=16, top_k=3)


def _cases(spatial_dims):
    size = (
        (64, 64) if spatial_dims == 2 else (32, 32, 32)
    )  # 2D ResNet: 2x2 tokens, so attention is not trivial
    q = torch.randint(1, 20, (2, 7))
    return [
        (
            "resnet",
            lambda **kw: OmniFMResNet(spatial_dims, 2, 5, channels=(8, 16, 32, 64), **SMALL, **kw),
            (torch.rand(2, 2, *size),),
            (2, 5),
        ),
        (
            "unet",
            lambda **kw: OmniFMUNet(spatial_dims, 2, 3, features=(8, 8, 16, 32, 64, 8), **SMALL, **kw),
            (torch.rand(2, 2, *size),),
            (2, 3, *size),
        ),
        (
            "vqa",
            lambda **kw: OmniFMVQA(
                spatial_dims, 2, 20, 6, embed_dim=32, channels=(8, 16, 32, 64), **SMALL, **kw
            ),
            (torch.rand(2, 2, *size), q),
            (2, 6),
        ),
    ]


def _fill_bank(net, x):
    net.bank.merge(
        [
            {"keys": kmeans_centroids(net.spectral_tokens(x + i).squeeze(1), 2), "site": i, "modality": 0}
            for i in range(3)
        ]
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("case", range(3))
def test_shapes(spatial_dims, case):
    _, build, inputs, out_shape = _cases(spatial_dims)[case]
    net = build()
    assert net(*inputs).shape == out_shape
    _fill_bank(net, inputs[0])
    assert net(*inputs).shape == out_shape


@pytest.mark.parametrize("case", range(3))
def test_every_part_off_is_exactly_the_backbone(case):
    _, build, inputs, _ = _cases(2)[case]
    net = build(**ALL_OFF).eval()
    assert net.tokenizer is None and net.bank is None and net.gate is None
    backbone_params = {id(p) for p in net.backbone.parameters()}
    assert all(id(p) in backbone_params for p in net.parameters())
    assert torch.equal(net(*inputs), net.backbone(*inputs))


@pytest.mark.parametrize("fusion_dim", [None, 16])
@pytest.mark.parametrize("case", range(3))
def test_gate_at_init_computes_the_backbone_function(case, fusion_dim):
    _, build, inputs, _ = _cases(2)[case]
    torch.manual_seed(0)
    net = build(fusion_dim=fusion_dim).eval()
    _fill_bank(net, inputs[0])
    assert torch.equal(net(*inputs), net.backbone(*inputs))
    net.gate.alpha.data.fill_(0.3)  # once the gate opens, the prior changes the output
    assert not torch.allclose(net(*inputs), net.backbone(*inputs))


def test_plain_backbone_checkpoint_loads_into_the_wrapper():
    backbone = BasicUNet(2, 1, 2, features=(8, 8, 16, 32, 64, 8))
    net = OmniFM(BasicUNet(2, 1, 2, features=(8, 8, 16, 32, 64, 8)), 2, 1, **SMALL)
    net.backbone.load_state_dict(backbone.state_dict())
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(net.eval()(x), backbone.eval()(x))


@pytest.mark.parametrize("fusion_dim", [None, 16])
@pytest.mark.parametrize("case", range(3))
def test_gradients_reach_every_trainable_part(case, fusion_dim):
    _, build, inputs, _ = _cases(2)[case]
    torch.manual_seed(0)
    net = build(gate_init=0.5, fusion_dim=fusion_dim).train()
    assert (net.fusion_proj is not None) == (fusion_dim is not None)  # the projections are trained too
    _fill_bank(net, inputs[0])
    out = net(*inputs)
    s, retrieved = net.spectral_alignment
    assert retrieved.shape[1] == 3
    loss = out.float().pow(2).mean() + (s.mean(1) - retrieved.mean(1)).pow(2).sum()
    loss.backward()
    # MONAI's TransformerBlock always builds `norm_cross_attn`, used only with cross-attention (off here)
    missing = [
        n
        for n, p in net.named_parameters()
        if "norm_cross_attn" not in n and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert missing == []


@pytest.mark.parametrize(
    "flags",
    [
        dict(use_gskr=False),
        dict(use_ecaf=False),
        dict(use_prefix=False),
        dict(use_suffix=False),
        dict(use_prefix=False, use_suffix=False),
        dict(use_ecaf=False, use_prefix=False, use_suffix=False),
    ],
)
def test_ablations_build_and_run(flags):
    net = OmniFMUNet(2, 1, 2, features=(8, 8, 16, 32, 64, 8), gate_init=0.5, **SMALL, **flags)
    x = torch.rand(2, 1, 32, 32)
    assert net(x).shape == (2, 2, 32, 32)
    assert (net.bank is None) == (not flags.get("use_gskr", True))
    assert any(is_private(n) and "suffix" in n for n, _ in net.named_parameters()) == flags.get(
        "use_suffix", True
    )
    fuses = any(flags.get(k, True) for k in ("use_ecaf", "use_prefix", "use_suffix"))
    # GSKR and SPA alone shape the spectral tokens but leave the forward path untouched
    assert torch.allclose(net(x), net.backbone(x)) != fuses


def test_private_parameters_are_the_suffix_and_the_gate_unless_the_gate_is_shared():
    net = OmniFMResNet(2, 1, 3, channels=(8, 16, 32, 64), **SMALL)
    private = [n for n, _ in net.named_parameters() if is_private(n)]
    assert sorted(private) == ["private_gate.alpha", "prompt.private_suffix"]
    shared_gate = OmniFMResNet(2, 1, 3, channels=(8, 16, 32, 64), private_gate=False, **SMALL)
    assert [n for n, _ in shared_gate.named_parameters() if is_private(n)] == ["prompt.private_suffix"]
    assert shared_gate.gate is shared_gate.shared_gate and net.gate is net.private_gate


def test_private_norms_are_the_backbones_and_only_when_omnifm_is_on():
    net = OmniFMResNet(2, 1, 3, channels=(8, 16, 16, 16), private_norms=True, **SMALL)
    private = net.private_state_keys()
    norms = {k for k in net.state_dict() if k.startswith("backbone.") and ".bn" in k}
    assert norms and norms <= private  # weights, biases and running statistics
    assert not any(k.startswith(("tokenizer.", "prompt.layers", "ecaf.")) for k in private)
    assert not norms & OmniFMResNet(2, 1, 3, channels=(8, 16, 16, 16), **SMALL).private_state_keys()
    plain = OmniFMResNet(2, 1, 3, channels=(8, 16, 16, 16), private_norms=True, **SMALL, **ALL_OFF)
    assert plain.private_state_keys() == set()  # the baselines' backbone: nothing private


def test_suffix_film_reaches_every_decoder_level_without_the_gate():
    """FiLM is the identity at initialisation; once trained, a site's suffix changes the segmentation even with
    the output gate shut, and every level of the decoder is modulated."""
    torch.manual_seed(0)
    net = OmniFMUNet(2, 1, 3, features=(8, 8, 16, 32, 64, 8), **SMALL).eval()
    x = torch.rand(2, 1, 32, 32)
    assert [m.out_features // 2 for m in net.film.maps] == [64, 32, 16, 8, 8]
    assert torch.equal(net(x), net.backbone(x))
    assert float(net.gate.value.detach()) == 0.0
    before = net(x)
    for m in net.film.maps:
        torch.nn.init.normal_(m.weight, std=0.1)
    moved = net(x)
    assert not torch.allclose(moved, before)
    with torch.no_grad():
        net.prompt.private_suffix.add_(1.0)  # another site's suffix: another output
    assert not torch.allclose(net(x), moved)
    for level, m in enumerate(net.film.maps):  # each level alone changes the output
        for other in net.film.maps:
            torch.nn.init.zeros_(other.weight)
        torch.nn.init.normal_(m.weight, std=0.1)
        assert not torch.allclose(net(x), net.backbone(x)), level
    no_film = OmniFMUNet(2, 1, 3, features=(8, 8, 16, 32, 64, 8), suffix_film=False, **SMALL)
    assert no_film.film is None and OmniFMResNet(2, 1, 3, channels=(8, 16, 32, 64), **SMALL).film is None


def test_parameter_groups_put_omnifm_parts_apart_without_weight_decay():
    net = OmniFMUNet(2, 1, 3, features=(8, 8, 16, 32, 64, 8), **SMALL)
    backbone, parts = net.parameter_groups(1e-3, parts_lr_scale=10.0, weight_decay=0.05)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in net.backbone.parameters()}
    assert (backbone["lr"], backbone["weight_decay"], parts["lr"], parts["weight_decay"]) == (
        1e-3,
        0.05,
        1e-3 * 10.0,
        0.0,
    )
    assert len(backbone["params"]) + len(parts["params"]) == len(list(net.parameters()))
    plain = OmniFMUNet(2, 1, 3, features=(8, 8, 16, 32, 64, 8), **ALL_OFF)
    assert len(plain.parameter_groups(1e-3, 10.0)) == 1


def test_unknown_backbone_needs_an_adapter():
    with pytest.raises(TypeError, match="adapter"):
        OmniFM(torch.nn.Conv2d(1, 1, 3), 2, 1)
    net = OmniFM(
        ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=2, n_input_channels=1, num_classes=2),
        2,
        1,
        adapter="omnifm_monai.networks.nets.adapters.ResNetAdapter",
        **SMALL,
    )
    assert net(torch.rand(1, 1, 32, 32)).shape == (1, 2)


def test_vqa_padding_does_not_change_the_answer():
    net = VQANet(2, 1, 20, 4, embed_dim=32, channels=(8, 16, 32, 64)).eval()
    x, q = torch.rand(1, 1, 32, 32), torch.tensor([[3, 5, 7]])
    padded = torch.tensor([[3, 5, 7, 0, 0, 0]])
    assert torch.allclose(net(x, q), net(x, padded), atol=1e-6)


def test_residual_unet_adds_its_input_and_checks_channels():
    torch.manual_seed(0)
    plain = OmniFMUNet(2, 1, 1, features=(8, 8, 16, 32, 64, 8), **ALL_OFF).eval()
    torch.manual_seed(0)
    residual = OmniFMUNet(2, 1, 1, features=(8, 8, 16, 32, 64, 8), residual=True, **ALL_OFF).eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(residual(x), x)  # zero-initialised last layer: the identity at the start
    residual.backbone.final_conv.load_state_dict(plain.backbone.final_conv.state_dict())
    assert torch.allclose(residual(x), plain(x) + x)
    with pytest.raises(ValueError, match="residual"):
        OmniFMUNet(2, 1, 3, residual=True)
    assert OmniFMUNet(2, 1, 2, features=(8, 8, 16, 32, 64, 8), norm=None, **ALL_OFF)(x).shape == (
        2,
        2,
        32,
        32,
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_unet_fusion_level_sets_the_fused_positions_and_keeps_the_backbone_function(spatial_dims, level):
    features = (8, 8, 16, 32, 64, 8)
    size = (32,) * spatial_dims
    x = torch.rand(2, 1, *size)
    torch.manual_seed(0)
    net = OmniFMUNet(spatial_dims, 1, 3, features=features, fusion_level=level, **SMALL).eval()
    tokens, state = net.adapter.encode(net.backbone, x)
    # the positions of encoder level `level` (S / 2^level per axis; pooled to at most 64), its channels
    assert tokens.shape == (2, min((32 // 2**level) ** spatial_dims, 64), features[level])
    assert net.adapter.token_dim(net.backbone) == features[level]
    assert torch.equal(net.adapter.decode(net.backbone, tokens, state, None), net.backbone(x))
    _fill_bank(net, x)
    assert torch.equal(net(x), net.backbone(x))  # gate closed at init: the backbone's function
    net.gate.alpha.data.fill_(0.5)
    changed = (net(x).argmax(1) != net.backbone(x).argmax(1)).float().mean()
    assert changed > 0  # the fused positions reach the output


def test_unet_fusion_level_is_checked_and_ignored_without_fusion():
    with pytest.raises(ValueError, match="fusion level"):
        OmniFMUNet(2, 1, 2, fusion_level=5)
    plain = OmniFMUNet(2, 1, 2, fusion_level=2, **ALL_OFF)
    assert plain.adapter.level == 4  # the baselines' features stay the bottleneck's
    fused = OmniFMUNet(2, 1, 2, fusion_level=2, spectral_dim=32)
    assert fused.adapter.level == 2
    # a smaller fused width means smaller shared parts: the prompt and attention weights are d x d
    wide = OmniFMUNet(2, 1, 2, fusion_level=4, spectral_dim=32)
    size = {n: sum(p.numel() for p in m.parameters()) for n, m in (("narrow", fused), ("wide", wide))}
    assert (
        sum(p.numel() for p in fused.prompt.parameters())
        < sum(p.numel() for p in wide.prompt.parameters()) / 4
    )
    assert size["narrow"] < size["wide"]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_large_fused_level_is_fused_on_its_pooled_grid(spatial_dims):
    size = 64 if spatial_dims == 2 else 32
    x = torch.rand(2, 1, *(size,) * spatial_dims)
    torch.manual_seed(0)
    net = OmniFMUNet(spatial_dims, 1, 3, features=(8, 8, 16, 32, 64, 8), fusion_level=1, **SMALL).eval()
    tokens, state = net.adapter.encode(net.backbone, x)
    # level 1 has (size / 2)^d positions; at most 64 are fused (8 x 8, 4 x 4 x 4), each the mean of its cell
    assert tokens.shape[1] == 64 < (size // 2) ** spatial_dims
    level = net.backbone.down_1(net.backbone.conv_0(x))
    cell = (size // 2) // round(64 ** (1 / spatial_dims))
    first = level[(slice(None), slice(None), *[slice(0, cell)] * spatial_dims)].mean(
        tuple(range(2, 2 + spatial_dims))
    )
    assert torch.allclose(tokens[:, 0], first, atol=1e-6)
    assert torch.equal(net.adapter.decode(net.backbone, tokens, state, None), net.backbone(x))
    _fill_bank(net, x)
    assert torch.equal(net(x), net.backbone(x))
    net.gate.alpha.data.fill_(0.5)
    assert (net(x).argmax(1) != net.backbone(x).argmax(1)).any()  # the pooled change reaches full resolution


def _trunk_case(kind, spatial_dims, level, **kw):
    channels = (8, 16, 32, 64)
    if kind == "resnet":
        net = OmniFMResNet(spatial_dims, 1, 5, channels=channels, fusion_level=level, **SMALL, **kw)
        return net, ()
    net = OmniFMVQA(
        spatial_dims, 1, 20, 6, embed_dim=24, channels=channels, fusion_level=level, **SMALL, **kw
    )
    return net, (torch.randint(1, 20, (2, 7)),)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("level", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["resnet", "vqa"])
def test_resnet_trunk_fusion_level_sets_the_fused_positions_and_keeps_the_backbone_function(
    kind, spatial_dims, level
):
    x = torch.rand(2, 1, *(32,) * spatial_dims)
    torch.manual_seed(0)
    net, extra = _trunk_case(kind, spatial_dims, level)
    net.eval()
    tokens, state = net.adapter.encode(net.backbone, x, *extra)
    # stage `level` has S / 2^(level + 1) positions per axis (stem: stride 2 and max-pool), pooled to at most 64;
    # at the last stage of the VQA trunk the tokens are the projected ones the question attends over
    width = 24 if (kind == "vqa" and level == 4) else (8, 16, 32, 64)[level - 1]
    assert tokens.shape == (2, min((32 // 2 ** (level + 1)) ** spatial_dims, 64), width)
    assert net.adapter.token_dim(net.backbone) == width
    assert torch.equal(net.adapter.decode(net.backbone, tokens, state, None), net.backbone(x, *extra))
    assert (
        [m.out_features // 2 for m in net.film.maps] == [16, 32, 64][level - 1 :]
        if level < 4
        else net.film is None
    )
    _fill_bank(net, x)
    assert torch.equal(
        net(x, *extra), net.backbone(x, *extra)
    )  # gate closed at init: the backbone's function
    net.gate.alpha.data.fill_(0.5)
    assert not torch.allclose(net(x, *extra), net.backbone(x, *extra))  # the fused positions reach the output


@pytest.mark.parametrize("kind", ["resnet", "vqa"])
def test_resnet_trunk_suffix_reaches_the_output_through_film_below_the_last_stage(kind):
    """Fused below the last stage, the private suffix cannot join the pooled (or question) feature: it
    modulates every later stage instead, and another site's suffix gives another output with the gate shut."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    net, extra = _trunk_case(kind, 2, 2)
    net.eval()
    for m in net.film.maps:
        torch.nn.init.normal_(m.weight, std=0.1)
    assert float(net.gate.value.detach()) == 0.0
    moved = net(x, *extra)
    assert not torch.allclose(moved, net.backbone(x, *extra))
    with torch.no_grad():
        net.prompt.private_suffix.add_(1.0)
    assert not torch.allclose(net(x, *extra), moved)


def test_resnet_fusion_level_is_checked_narrows_the_shared_parts_and_is_ignored_without_fusion():
    with pytest.raises(ValueError, match="fusion level"):
        OmniFMResNet(2, 1, 2, fusion_level=0)
    assert OmniFMVQA(2, 1, 20, 6, fusion_level=2, **ALL_OFF).adapter.level == 4
    narrow, wide = (OmniFMResNet(2, 1, 2, fusion_level=level, spectral_dim=32) for level in (2, 4))
    assert narrow.adapter.level == 2 and narrow.adapter.token_dim(narrow.backbone) == 64
    parts = lambda net: sum(p.numel() for m in (net.prompt, net.ecaf) for p in m.parameters())  # noqa: E731
    assert parts(narrow) < parts(wide) / 8  # attention and prompt weights are d x d: 64 against 256 wide


def test_fusion_dim_sets_the_width_of_attention_and_prompt_and_maps_the_suffix_back():
    """ECAF and PSP work at ``fusion_dim`` (their d x d weights shrink with it); at the backbone's own width no
    projection is built; the private suffix still reaches a ResNet's pooled feature through the projection."""
    wide = OmniFMResNet(2, 1, 3, spectral_dim=32)
    narrow = OmniFMResNet(2, 1, 3, spectral_dim=32, fusion_dim=64)
    assert (
        OmniFMResNet(2, 1, 3, spectral_dim=32, fusion_dim=256).fusion_proj is None
    )  # 256: the last stage's width
    assert narrow.fusion_proj.inward.in_features == 256 and narrow.fusion_proj.outward.out_features == 256
    assert narrow.ecaf.attn.to_q.in_features == 64 and narrow.prompt.private_suffix.shape[-1] == 64
    parts = lambda net: sum(p.numel() for m in (net.prompt, net.ecaf) for p in m.parameters())  # noqa: E731
    assert parts(narrow) < parts(wide) / 12  # about (256 / 64)^2 = 16x fewer
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    narrow.eval().gate.alpha.data.fill_(0.5)
    before = narrow(x)
    with torch.no_grad():
        narrow.prompt.private_suffix.add_(1.0)  # another site's suffix: another prediction
    assert not torch.allclose(narrow(x), before)


def test_token_bank_keys_see_where_in_the_window_tokens_differ_and_join_the_context_token_by_token():
    """``bank_keys="tokens"``: an image's key is its m tokens side by side, so two images with the same mean
    token but tokens in another order get different keys (the mean key cannot tell them apart); a retrieved
    prototype joins the fusion context as m tokens."""
    torch.manual_seed(0)
    net = OmniFMUNet(2, 1, 3, features=(8, 8, 16, 32, 64, 8), **{**SMALL, "top_k": 2}, bank_keys="tokens")
    mean_net = OmniFMUNet(2, 1, 3, features=(8, 8, 16, 32, 64, 8), **SMALL)
    m, d = 4, SMALL["spectral_dim"]
    assert net.bank.embed_dim == m * d and mean_net.bank.embed_dim == d
    x = torch.rand(3, 1, 32, 32)
    tokens = net.spectral_tokens(x)
    assert torch.equal(net.spectral_keys(x), tokens.flatten(1))
    reordered = tokens.flip(1)  # the same tokens in another order
    assert torch.allclose(mean_net.bank_key(reordered), mean_net.bank_key(tokens))
    cos = torch.nn.functional.cosine_similarity(net.bank_key(reordered), net.bank_key(tokens), dim=1)
    assert (cos < 0.999).all()
    # the cosine of two token keys is the mean cosine of their tokens, position by position
    per_token = torch.nn.functional.cosine_similarity(reordered, tokens, dim=2).mean(1)
    assert torch.allclose(cos, per_token, atol=1e-5)
    net.bank.merge([{"keys": net.spectral_keys(x).detach(), "site": 0, "modality": 0}])
    net(x)
    s, retrieved = net.spectral_alignment
    assert retrieved.shape == (3, 2 * m, d)
    assert torch.allclose(retrieved[:, :m], tokens.detach(), atol=1e-6)  # each image's nearest key is its own
    with pytest.raises(ValueError, match="bank_keys"):
        OmniFMUNet(2, 1, 3, bank_keys="max")
