"""OmniFM for MONAI: spectral components, task networks and federated strategies."""

__version__ = "0.1.0"
