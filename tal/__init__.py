"""stovtal.tal — localization, self-training and evaluation over a feature store."""

from features import __version__  # one version for the whole toolkit

__all__ = ["__version__"]
