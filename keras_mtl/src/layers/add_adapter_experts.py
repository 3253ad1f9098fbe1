import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.mixture_of_adapter_experts import (
    MixtureOfAdapterExperts,
)


class _Stash:
    """Hands the feed-forward input from one wrapper to the other within a
    call (a plain object, so Keras does not track it)."""

    inputs = None


class _FeedForwardInputTap(keras.layers.Layer):
    """Wraps an encoder's intermediate dense: remembers its input.

    Internal and not serialised: `add_adapter_experts` is re-applied after
    loading (see its docstring)."""

    def __init__(self, dense, stash, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense
        self._stash = stash

    def build(self, input_shape):
        pass  # the wrapped dense is already built

    def call(self, inputs):
        self._stash.inputs = inputs
        return self.dense(inputs)

    def compute_output_shape(self, input_shape):
        return self.dense.compute_output_shape(input_shape)


class _ParallelAdapterExperts(keras.layers.Layer):
    """Wraps an encoder's output dense: adds the expert mixture of the
    feed-forward input to the feed-forward output."""

    def __init__(self, dense, experts, stash, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense
        self.experts = experts
        self._stash = stash

    def build(self, input_shape):
        pass  # both sub-layers are built before wrapping

    def call(self, inputs, training=None):
        return self.dense(inputs) + self.experts(
            self._stash.inputs, training=training
        )

    def compute_output_shape(self, input_shape):
        return self.dense.compute_output_shape(input_shape)


def _encoders(backbone):
    layers = getattr(backbone, "transformer_layers", None)
    if layers is None:
        layers = backbone.layers
    return [
        layer
        for layer in layers
        if hasattr(layer, "_feedforward_intermediate_dense")
        and hasattr(layer, "_feedforward_output_dense")
    ]


@keras_mtl_export("keras_mtl.layers.add_adapter_experts")
def add_adapter_experts(backbone, layer_indices=None, **moae_kwargs):
    """Adds a `MixtureOfAdapterExperts` in parallel to the feed-forward block
    of transformer encoder layers, in place.

    For each chosen keras-hub `TransformerEncoder` (BERT, RoBERTa, XLM-R,
    DistilBERT, ALBERT, ELECTRA, ... backbones; any layer with the
    sub-layers `_feedforward_intermediate_dense` and
    `_feedforward_output_dense`), the feed-forward block becomes
    `FFN(u) + MoAE(u)`, with `u` its input, before the block's dropout and
    residual connection, as in S4D. The two dense sub-layers are wrapped as
    a pair (the first records `u`, the second adds the mixture), which is
    how a built functional backbone can be patched: Keras re-runs the
    layers' `call` methods, so the change applies on every backend. The
    up-projections start at zero, so the backbone's outputs are unchanged
    until training moves them.

    The new weights appear in `backbone.weights`; freeze the pre-trained
    weights first (`backbone.trainable = False`) to train only the experts.
    The backbone's config does not record the insertion: after loading a
    saved backbone, call this function again before loading the weights.

    Args:
        backbone: a built keras-hub backbone (or any model whose encoder
            layers follow `TransformerEncoder`'s structure).
        layer_indices: indices (into the encoder layers, negative allowed)
            of the layers to modify; defaults to the last half, as in S4D
            (layers 6-11 of 12).
        **moae_kwargs: arguments of `MixtureOfAdapterExperts`
            (`num_experts`, `top_k`, `hidden_ratio`, ...).

    Returns:
        The list of inserted `MixtureOfAdapterExperts` layers.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=20, num_layers=2, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=4)
    >>> experts = keras_mtl.layers.add_adapter_experts(backbone, num_experts=2)
    >>> len(experts)
    1

    Reference:
        Chen et al., "Static for Dynamic", IEEE TAC 2025 (arXiv 2409.06154).
    """
    encoders = _encoders(backbone)
    if not encoders:
        raise ValueError(
            "`backbone` has no transformer encoder layers with "
            "`_feedforward_intermediate_dense` / `_feedforward_output_dense`. "
            f"Received: backbone={backbone!r}"
        )
    n = len(encoders)
    if layer_indices is None:
        layer_indices = list(range(n // 2, n))
    chosen = []
    for index in layer_indices:
        if isinstance(index, bool) or not isinstance(index, int) or not (
            -n <= index < n
        ):
            raise ValueError(
                f"`layer_indices` must hold integers in [-{n}, {n}). "
                f"Received: layer_indices={layer_indices!r}"
            )
        chosen.append(encoders[index])
    inserted = []
    for encoder in chosen:
        intermediate = encoder._feedforward_intermediate_dense
        output = encoder._feedforward_output_dense
        if isinstance(output, _ParallelAdapterExperts):
            raise ValueError(
                f"Encoder layer {encoder.name!r} already has adapter experts."
            )
        width = output.units
        experts = MixtureOfAdapterExperts(
            dtype=encoder.dtype_policy,
            name=f"{encoder.name}_adapter_experts",
            **moae_kwargs,
        )
        experts.build((None, width))
        stash = _Stash()
        tap = _FeedForwardInputTap(intermediate, stash, name="ffn_input_tap")
        wrapped = _ParallelAdapterExperts(
            output, experts, stash, name="ffn_output_with_experts"
        )
        tap.build(None)
        wrapped.build(None)
        encoder._tracker.unlock()
        encoder._feedforward_intermediate_dense = tap
        encoder._feedforward_output_dense = wrapped
        encoder._tracker.lock()
        inserted.append(experts)
    return inserted
