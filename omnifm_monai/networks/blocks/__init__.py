from .attention import CrossAttention, TransformerLayer, multi_head_attention
from .film import SuffixFiLM
from .fusion import CrossAttentionFusion
from .gate import ZeroGate
from .knowledge_bank import SpectralKnowledgeBank, kmeans_centroids
from .prompts import PRIVATE_PREFIX, PrefixSuffixPrompt, is_private
from .tokenizer import SpectralTokenizer

__all__ = [
    "PRIVATE_PREFIX",
    "CrossAttention",
    "CrossAttentionFusion",
    "PrefixSuffixPrompt",
    "SpectralKnowledgeBank",
    "SpectralTokenizer",
    "SuffixFiLM",
    "TransformerLayer",
    "ZeroGate",
    "is_private",
    "kmeans_centroids",
    "multi_head_attention",
]
