"""Implementations behind `keras_mtl.layers`."""
