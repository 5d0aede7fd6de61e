from .spa import OmniFMLoss, SpectralProximalAlignmentLoss

__all__ = ["OmniFMLoss", "SpectralProximalAlignmentLoss"]
