from .spa import OmniFMLoss, SpectralProximalAlignmentLoss, token_spread

__all__ = ["OmniFMLoss", "SpectralProximalAlignmentLoss", "token_spread"]
