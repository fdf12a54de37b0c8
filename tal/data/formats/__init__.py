"""Readers for the individual ground-truth file formats; each fills an AnnotationBuilder."""

from tal.data.formats import bsn, compact, official, thumos_txt

__all__ = ["bsn", "compact", "official", "thumos_txt"]
