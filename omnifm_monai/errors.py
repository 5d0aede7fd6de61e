"""The error a command reports in one line: a setting that names nothing or is out of range."""

from __future__ import annotations

__all__ = ["SettingsError"]


class SettingsError(ValueError):
    """A run's setting is refused (rounds < 1, an override id the bundle lacks, an unknown strategy or option,
    a site both training and unseen, ...). Raised before any work, so the command line prints its message as
    one line, with no traceback."""
