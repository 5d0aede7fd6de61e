"""A compact medical VQA network: image tokens, a question encoder, closed-set answer classification."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import CrossAttentionBlock
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["VQANet"]


class VQANet(nn.Module):
    """Answer classification over a closed answer set.

    Image: a MONAI ResNet trunk -> tokens ``(B, L, embed_dim)``. Question: word embedding over a
    vocabulary built from the training questions (index 0 is padding) -> GRU -> masked mean. The
    question attends over the image tokens; ``[q, attended, q * attended]`` -> MLP -> answer logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        vocab_size: words in the question vocabulary, padding included.
        num_answers: size of the closed answer set.
        embed_dim: token size.
        channels: ResNet stage widths.
        layers: ResNet blocks per stage.
        num_heads: attention heads.
        dropout: dropout before the answer classifier.

    Shapes: ``image (B, in_channels, *S)``, ``question (B, T)`` int64 (or nested lists of word indices) ->
    ``(B, num_answers)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        vocab_size: int,
        num_answers: int,
        embed_dim: int = 128,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        layers: tuple[int, ...] = (1, 1, 1, 1),
        num_heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.image_encoder = ResNet(
            "basic",
            list(layers),
            list(channels),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            feed_forward=False,
        )
        self.image_proj = nn.Linear(channels[-1], embed_dim)
        self.word_embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.question_encoder = nn.GRU(embed_dim, embed_dim, batch_first=True)
        self.attend = CrossAttentionBlock(embed_dim, num_heads)
        self.classifier = nn.Sequential(
            nn.Linear(3 * embed_dim, embed_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(embed_dim, num_answers),
        )

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        e = self.image_encoder
        x = e.act(e.bn1(e.conv1(image)))
        x = e.layer4(e.layer3(e.layer2(e.layer1(x if e.no_max_pool else e.maxpool(x)))))
        return self.image_proj(x.flatten(2).transpose(1, 2))

    def encode_question(self, question: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        if not isinstance(question, torch.Tensor):  # word indices as nested lists, e.g. from the command line
            question = torch.as_tensor(question, device=self.word_embedding.weight.device)
        mask = (question != 0).unsqueeze(-1).float()
        out, _ = self.question_encoder(self.word_embedding(question.long()))
        return (out * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def answer(
        self,
        image_tokens: torch.Tensor,
        question: torch.Tensor | Sequence[Sequence[int]],
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Answer logits from image tokens; ``extra (B, embed_dim)`` is added to the question feature."""
        q = self.encode_question(question)
        if extra is not None:
            q = q + extra
        attended = self.attend(q.unsqueeze(1), context=image_tokens).squeeze(1)
        return self.classifier(torch.cat([q, attended, q * attended], dim=-1))

    def forward(self, image: torch.Tensor, question: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        return self.answer(self.encode_image(image), question)
