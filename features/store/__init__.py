"""The feature store: per-video snippet features [T, D] with provenance, in Zarr 3 or HDF5.

See docs/store.md for the layout and its guarantees.
"""

from .core import FeatureStore, create_store, open_store
from .model import Grid, StoreError, VideoInfo, Vocabulary, allowed_row_counts

__all__ = ["FeatureStore", "Grid", "StoreError", "VideoInfo", "Vocabulary", "allowed_row_counts",
           "create_store", "open_store"]
