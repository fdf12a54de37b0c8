"""stovtal.features — decode videos, encode snippets with open_clip, keep them in a feature store.

This package never imports ``tal``: everything downstream reads stores through ``features.store``.
"""

__version__ = "0.1.0"
