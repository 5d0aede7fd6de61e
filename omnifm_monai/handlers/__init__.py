from .group_accuracy import GroupAccuracy
from .novelty import NoveltyCalibration, NoveltyCheck, novelty_scores
from .prediction_writer import PredictionJSONWriter
from .spectral_bank import SpectralBankRefresh, site_centroids

__all__ = [
    "GroupAccuracy",
    "NoveltyCalibration",
    "NoveltyCheck",
    "PredictionJSONWriter",
    "SpectralBankRefresh",
    "novelty_scores",
    "site_centroids",
]
