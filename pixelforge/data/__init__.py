"""Data: image file I/O (``image_io``), SR datasets and resizing (``sr_datasets``, ``resize``)."""
from .image_io import (IMAGE_SUFFIXES, EmptyImageError, ImageData, ImageIOError, ImageReadError, ImageWriteError,
                       UnsupportedImageError, atomic_open, list_image_files, quantize, read_image, write_image)

__all__ = ["IMAGE_SUFFIXES", "EmptyImageError", "ImageData", "ImageIOError", "ImageReadError", "ImageWriteError",
           "UnsupportedImageError", "atomic_open", "list_image_files", "quantize", "read_image", "write_image"]
