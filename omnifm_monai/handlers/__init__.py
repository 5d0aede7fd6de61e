from .prediction_writer import PredictionJSONWriter
from .spectral_bank import SpectralBankRefresh, site_centroids

__all__ = ["PredictionJSONWriter", "SpectralBankRefresh", "site_centroids"]
