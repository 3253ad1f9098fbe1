"""Adding a `"tap"` wrapper's delta at the end of its sub-layer (private).

A parallel adapter reads a sub-layer's input and adds to its output. In a
keras-hub `TransformerEncoder` the input of each sub-layer is the input of
its first projection (the attention's query projection, the feed-forward
block's intermediate dense), where an `AdapterWrapper(placement="tap")`
computes the delta; the sub-layer's output passes through its dropout,
which `AddTappedDelta` wraps to add the delta there.
"""

import keras

from keras_mtl.src.transfer import backbone_walk

# Tap slot -> the slot whose output receives the delta.
OUTPUTS = {
    backbone_walk.QUERY: "_self_attention_dropout",
    backbone_walk.FEEDFORWARD_INPUT: "_feedforward_dropout",
}


class AddTappedDelta(keras.layers.Layer):
    """Wraps a sub-layer's last layer: adds the tap's delta to its output.

    Internal and not serialised: `describe_transfer` records the tap
    wrapper, and `restore_transfer` re-inserts this layer with it."""

    def __init__(self, layer, stash, **kwargs):
        super().__init__(dtype=layer.dtype_policy, **kwargs)
        self.layer = layer
        self._stash = stash

    def build(self, input_shape):
        pass  # the wrapped layer is built

    def call(self, inputs, training=None):
        outputs = self.layer(inputs, training=training)
        delta = self._stash.delta
        return outputs if delta is None else outputs + delta

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


def check_output(encoder, slot):
    """Raises unless the output slot paired with tap `slot` is free."""
    target = OUTPUTS[slot]
    layer = backbone_walk.sublayer(encoder, target)
    if not isinstance(layer, keras.layers.Dropout):
        raise ValueError(
            f"Encoder {encoder.name!r} has {target}={layer!r}; a parallel "
            "adapter adds its output there, so it needs the plain dropout "
            "(other adapters already sit there?)."
        )


def attach(encoder, slot, wrapper):
    """Inserts the layer that adds `wrapper`'s (a tap at `slot`) delta."""
    target = OUTPUTS[slot]
    inner = backbone_walk.sublayer(encoder, target)
    backbone_walk.replace_sublayer(
        encoder, target,
        AddTappedDelta(inner, wrapper.stash, name=f"{inner.name}_parallel"))


def detach(encoder, slot):
    """Removes the layer `attach` inserted for the tap at `slot`."""
    target = OUTPUTS[slot]
    adder = backbone_walk.sublayer(encoder, target)
    if isinstance(adder, AddTappedDelta):
        backbone_walk.replace_sublayer(encoder, target, adder.layer,
                                       untrack=adder)
