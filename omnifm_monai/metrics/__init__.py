from .accuracy import AccuracyMetric, class_indices

__all__ = ["AccuracyMetric", "class_indices"]
