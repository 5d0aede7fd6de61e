import pytest
import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer

from omnifm_monai.losses import OmniFMLoss, SpectralProximalAlignmentLoss, token_spread
from omnifm_monai.networks import OmniFMResNet
from omnifm_monai.networks.blocks import SpectralTokenizer, kmeans_centroids


def test_spa_matches_reference_and_cosine_identity():
    s = F.normalize(torch.randn(4, 16), dim=-1).requires_grad_()
    g = F.normalize(torch.randn(4, 1, 16), dim=-1)  # one retrieved unit prototype: ||s-g||^2 = 2 - 2cos
    loss = SpectralProximalAlignmentLoss()(s, g)
    assert torch.allclose(loss, (2 - 2 * F.cosine_similarity(s, g[:, 0])).mean(), atol=1e-6)
    retrieved = torch.randn(4, 3, 16, requires_grad=True)
    SpectralProximalAlignmentLoss()(s, retrieved).backward()
    assert retrieved.grad is None  # the prior is a stop-gradient target
    assert s.grad is not None


def test_spa_empty_retrieval_is_zero():
    s = torch.randn(2, 1, 8, requires_grad=True)
    assert SpectralProximalAlignmentLoss()(s, torch.zeros(2, 0, 8)) == 0


def test_omnifm_loss_adds_weighted_spa():
    net = OmniFMResNet(2, 1, 3, channels=(8, 16, 32, 64), spectral_dim=32, tokenizer_grid=8, top_k=2)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    net.bank.merge(
        [{"keys": kmeans_centroids(net.spectral_tokens(x).squeeze(1), 3), "site": 0, "modality": 0}]
    )
    ce = torch.nn.CrossEntropyLoss()
    pred = net(x)
    total = OmniFMLoss(ce, net, spa_weight=0.5)(pred, y)
    expected = ce(pred, y) + 0.5 * SpectralProximalAlignmentLoss()(*net.spectral_alignment)
    assert torch.allclose(total, expected)
    assert torch.allclose(OmniFMLoss(ce, net, spa_weight=0.0)(pred, y), ce(pred, y))
    assert not any(p is q for p in OmniFMLoss(ce, net).parameters() for q in net.parameters())
    with pytest.raises(ValueError):
        OmniFMLoss(ce, net, spa_weight=-1)


def test_omnifm_trains_with_monais_supervised_trainer():
    torch.manual_seed(0)
    net = OmniFMResNet(
        2, 1, 2, channels=(8, 16, 32, 64), spectral_dim=32, tokenizer_grid=8, top_k=2, gate_init=0.1
    )
    # two classes told apart by frequency content
    data = [
        {"image": torch.rand(1, 32, 32) * (1 if i % 2 else 0.2), "label": torch.tensor(i % 2)}
        for i in range(16)
    ]
    net.bank.merge(
        [
            {
                "keys": kmeans_centroids(
                    net.spectral_tokens(torch.stack([d["image"] for d in data])).squeeze(1), 4
                ),
                "site": 0,
                "modality": 0,
            }
        ]
    )
    tokenizer_before = net.tokenizer.filter.detach().clone()
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=OmniFMLoss(torch.nn.CrossEntropyLoss(), net, spa_weight=1.0),
    )
    trainer.run()
    assert torch.isfinite(torch.tensor(trainer.state.output[0]["loss"]))
    assert not torch.equal(tokenizer_before, net.tokenizer.filter)  # SPA and fusion train the tokenizer
    assert net.bank.hits.sum() == 3 * 2 * 16  # epochs x k x samples retrieved in training mode


@pytest.mark.parametrize("spread_weight", [0.0, 10.0])
def test_spa_training_keeps_the_token_spread_above_its_floor_only_with_the_anti_collapse_term(
    reference_slices, spread_weight
):
    """SPA alone pulls every token to the retrieved prior (one token for all images); the anti-collapse term
    keeps the batch's spread above its floor while SPA still pulls towards the prior."""
    images, _ = reference_slices
    torch.manual_seed(0)
    tok = SpectralTokenizer(2, 1, 32, beta=0.15, num_tokens=4, standardize=False)
    with torch.no_grad():
        prior = tok(images[:8]).mean(1)[None].expand(len(images), -1, -1)  # k = 8 retrieved prototypes
        start = float(token_spread(tok(images)))
    loss = SpectralProximalAlignmentLoss(spread_weight=spread_weight, spread_floor=0.05)
    optimizer = torch.optim.Adam(tok.parameters(), 1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        loss(tok(images), prior).backward()
        optimizer.step()
    with torch.no_grad():
        end = float(token_spread(tok(images)))
    if spread_weight == 0:
        assert end < min(0.01, start / 2), (start, end)  # collapsed
    else:
        assert end >= 0.05 * 0.9, (start, end)  # held at the floor (within a tenth of it)


def test_token_spread_matches_the_pairwise_cosine_reference():
    tokens = torch.randn(7, 16)
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    pairs = [float(unit[i] @ unit[j]) for i in range(7) for j in range(7) if i != j]
    assert abs(float(token_spread(tokens)) - (1 - sum(pairs) / len(pairs))) < 1e-5
    assert float(token_spread(tokens[:1])) == 0.0 and float(token_spread(tokens[:1].expand(5, -1))) < 1e-6
