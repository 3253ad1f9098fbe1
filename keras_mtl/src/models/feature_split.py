"""Splitting a model's forward pass at a named layer's output.

`gradient_mode="features"` differentiates each task loss with respect to the
shared representation `z` (the output of one layer), aggregates those
per-task gradients, and sends the result back through the trunk in one
backward pass. `split_at(layer, detach)` makes that possible for any Keras
model (functional or subclassed) without rebuilding its graph: while the
block runs, the layer's output `z` is recorded and the rest of the model
receives `detach(z)` instead, a tensor that the backend engine can
differentiate against and through which no gradient reaches the trunk.
"""

import contextlib

import keras


class FeatureSplit:
    """What `split_at` recorded during one forward pass.

    Attributes:
        features: the layer's output `z` (connected to the trunk).
        detached: what the rest of the model received (`detach(z)`).
    """

    def __init__(self):
        self.features = None
        self.detached = None


def find_layer(model, name):
    """The layer named `name` in `model` or, depth first, in its nested
    models and layers that list `layers` (Sequential, Functional)."""
    for layer in model.layers:
        if layer.name == name:
            return layer
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found = find_layer(layer, name)
            if found is not None:
                return found
    return None


@contextlib.contextmanager
def split_at(layer, detach):
    """Within the block, `layer`'s output `z` is recorded and replaced by
    `detach(z)`.

    Args:
        layer: the layer whose output is the shared representation.
        detach: function from `z` to the tensor the rest of the model sees.

    Yields:
        The `FeatureSplit` record, filled in by the forward pass.
    """
    record = FeatureSplit()
    original = layer.call

    def call(*args, **kwargs):
        z = original(*args, **kwargs)
        if record.features is not None:
            raise ValueError(
                f"gradient_mode='features' needs layer {layer.name!r} to be "
                "called once per forward pass; it was called again. "
                f"Received: features={layer.name!r}"
            )
        if not keras.ops.is_tensor(z):
            raise ValueError(
                f"gradient_mode='features' needs layer {layer.name!r} to "
                "return a single tensor. Received: "
                f"{type(z).__name__}"
            )
        record.features = z
        record.detached = detach(z)
        return record.detached

    # An instance attribute shadows the class's `call` for this block only;
    # `object.__setattr__` keeps it out of Keras' attribute tracking.
    object.__setattr__(layer, "call", call)
    try:
        yield record
    finally:
        object.__delattr__(layer, "call")
    if record.features is None:
        raise ValueError(
            f"gradient_mode='features': layer {layer.name!r} was not called "
            f"by the model's forward pass. Received: features={layer.name!r}"
        )
