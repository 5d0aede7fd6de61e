from .group_accuracy import GroupAccuracy
from .prediction_writer import PredictionJSONWriter
from .spectral_bank import SpectralBankRefresh, site_centroids

__all__ = ["GroupAccuracy", "PredictionJSONWriter", "SpectralBankRefresh", "site_centroids"]
