from .adapters import ADAPTERS, BasicUNetAdapter, ResNetAdapter, VQANetAdapter, adapter_for
from .omnifm import OmniFM, OmniFMResNet, OmniFMUNet, OmniFMVQA
from .vqa import VQANet

__all__ = [
    "ADAPTERS",
    "BasicUNetAdapter",
    "OmniFM",
    "OmniFMResNet",
    "OmniFMUNet",
    "OmniFMVQA",
    "ResNetAdapter",
    "VQANet",
    "VQANetAdapter",
    "adapter_for",
]
