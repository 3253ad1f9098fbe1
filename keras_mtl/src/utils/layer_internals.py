"""The Keras layer internals keras_mtl relies on, in one place.

Keras 3 (3.8 - 3.15) has no public way to list every nested sub-layer of a
layer, to add or drop a sub-layer of a built layer, nor to tell how often a
functional graph calls a layer. These helpers wrap the private
`Layer._flatten_layers` and `Layer._tracker` (the same calls Keras' own
`Dense.enable_lora` makes) and `Operation._inbound_nodes`, so that a change
in Keras is fixed here only.
"""

import contextlib


def sublayers(layer, include_self=False, recursive=True):
    """The sub-layers of `layer`, depth first, each once."""
    return list(layer._flatten_layers(include_self=include_self,
                                      recursive=recursive))


@contextlib.contextmanager
def unlocked(layer):
    """Lets a built layer track new sub-layers."""
    locked = layer._tracker.locked
    if locked:
        layer._tracker.unlock()
    try:
        yield
    finally:
        if locked:
            layer._tracker.lock()


def untrack(layer, sublayer):
    """Stops `layer` listing `sublayer` among its sub-layers."""
    layer._tracker.untrack(sublayer)


def call_count(layer):
    """How many times functional graphs call `layer` (its inbound nodes)."""
    return len(getattr(layer, "_inbound_nodes", ()))
