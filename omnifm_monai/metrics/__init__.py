from .accuracy import AccuracyMetric, GroupAccuracy

__all__ = ["AccuracyMetric", "GroupAccuracy"]
