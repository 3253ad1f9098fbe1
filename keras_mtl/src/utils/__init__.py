"""Private helpers shared by several `keras_mtl` modules."""
