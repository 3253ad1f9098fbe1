"""Transfer learning utilities (implementation of `keras_mtl.transfer`)."""
