"""Data: image loading, dataset readers, the synthetic generator, transforms and samplers."""

from chaiderm.data.images import MAX_PIXELS, load_image, load_mask
from chaiderm.data.records import ImageTable, load_table, read_folder, read_groups, read_isic2017

__all__ = [
    "MAX_PIXELS",
    "ImageTable",
    "load_image",
    "load_mask",
    "load_table",
    "read_folder",
    "read_groups",
    "read_isic2017",
]
