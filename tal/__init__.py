"""stovtal.tal — localization, self-training and evaluation over a feature store."""

import os

from features import __version__  # one version for the whole toolkit

# oneDNN (torch's CPU convolutions) keeps 1,024 prepared kernels, one per input shape; length-aware batches
# (~50 padded lengths x ~60 convolutions x forward and backward) thrash that cache. It is read when the first
# kernel is made, so setting it here is in time; a user's own value wins. Measured in docs/train.md (Speed).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

__all__ = ["__version__"]
