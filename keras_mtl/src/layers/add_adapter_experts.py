import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.mixture_of_adapter_experts import (
    MixtureOfAdapterExperts,
)
from keras_mtl.src.transfer.backbone_walk import FEEDFORWARD_INPUT
from keras_mtl.src.transfer.backbone_walk import FEEDFORWARD_OUTPUT
from keras_mtl.src.transfer.backbone_walk import has_feedforward
from keras_mtl.src.transfer.backbone_walk import replace_sublayer
from keras_mtl.src.transfer.backbone_walk import sublayer


class _Stash:
    """Hands the feed-forward input from one wrapper to the other within a
    call (a plain object, so Keras does not track it)."""

    inputs = None


class _FeedForwardInputTap(keras.layers.Layer):
    """Wraps an encoder's intermediate dense: remembers its input.

    Internal and not serialised by the encoder's config: a
    `keras_mtl.MultiTaskModel` records the insertion with
    `keras_mtl.transfer.describe_transfer` and re-creates it on loading."""

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


def find_adapter_experts(encoder):
    """The `MixtureOfAdapterExperts` inserted into `encoder`, or None."""
    wrapped = sublayer(encoder, FEEDFORWARD_OUTPUT)
    if isinstance(wrapped, _ParallelAdapterExperts):
        return wrapped.experts
    return None


def insert_adapter_experts(encoder, experts):
    """Runs the built `experts` in parallel to `encoder`'s feed-forward block.

    The step of `add_adapter_experts` for one encoder layer, also used to
    re-create a saved insertion (`keras_mtl.transfer.restore_transfer`).

    Args:
        encoder: a built keras-hub `TransformerEncoder` (its feed-forward
            dense layers are reached through `backbone_walk.sublayer`).
        experts: a built `MixtureOfAdapterExperts` whose input and output
            width is the encoder's hidden width.

    Returns:
        `experts`.
    """
    if find_adapter_experts(encoder) is not None:
        raise ValueError(
            f"Encoder layer {encoder.name!r} already has adapter experts."
        )
    stash = _Stash()
    tap = _FeedForwardInputTap(
        sublayer(encoder, FEEDFORWARD_INPUT), stash, name="ffn_input_tap"
    )
    wrapped = _ParallelAdapterExperts(
        sublayer(encoder, FEEDFORWARD_OUTPUT),
        experts,
        stash,
        name="ffn_output_with_experts",
    )
    tap.build(None)
    wrapped.build(None)
    replace_sublayer(encoder, FEEDFORWARD_INPUT, tap)
    replace_sublayer(encoder, FEEDFORWARD_OUTPUT, wrapped)
    return experts


def remove_adapter_experts(encoder):
    """Undoes `insert_adapter_experts`: puts the two dense layers back.

    Args:
        encoder: an encoder layer.

    Returns:
        The removed `MixtureOfAdapterExperts`, or None if `encoder` had none.
    """
    wrapped = sublayer(encoder, FEEDFORWARD_OUTPUT)
    if not isinstance(wrapped, _ParallelAdapterExperts):
        return None
    tap = sublayer(encoder, FEEDFORWARD_INPUT)
    if isinstance(tap, _FeedForwardInputTap):
        replace_sublayer(encoder, FEEDFORWARD_INPUT, tap.dense, untrack=tap)
    replace_sublayer(encoder, FEEDFORWARD_OUTPUT, wrapped.dense,
                     untrack=wrapped)
    return wrapped.experts


def _encoders(backbone):
    layers = getattr(backbone, "transformer_layers", None)
    if layers is None:
        layers = backbone.layers
    return [layer for layer in layers if has_feedforward(layer)]


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
    The backbone's own config does not record the insertion, but a
    `keras_mtl.MultiTaskModel` built on the backbone does (see
    `keras_mtl.transfer.describe_transfer`), so such a model round-trips
    through `model.save("m.keras")` and `keras.saving.load_model`. For a
    saved backbone alone, call this function again before loading the
    weights.

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
        if find_adapter_experts(encoder) is not None:
            raise ValueError(
                f"Encoder layer {encoder.name!r} already has adapter experts."
            )
        width = sublayer(encoder, FEEDFORWARD_OUTPUT).units
        experts = MixtureOfAdapterExperts(
            dtype=encoder.dtype_policy,
            name=f"{encoder.name}_adapter_experts",
            **moae_kwargs,
        )
        experts.build((None, width))
        inserted.append(insert_adapter_experts(encoder, experts))
    return inserted
