"""Data pipelines for multi-task training (public API)."""

from keras_mtl.src.data.interleave import InterleavedDataset
from keras_mtl.src.data.interleave import interleave
