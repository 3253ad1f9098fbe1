"""Finding the encoders and adapter wrappers inside a model (private)."""

import keras

from keras_mtl.src.transfer.adapter_wrapper import AdapterWrapper
from keras_mtl.src.utils.layer_internals import call_count
from keras_mtl.src.utils.layer_internals import sublayers
from keras_mtl.src.utils.layer_internals import unlocked
from keras_mtl.src.utils.layer_internals import untrack as untrack_layer

# keras-hub's `TransformerEncoder` keeps its sub-layers in private attributes
# (the same names in keras-hub 0.20 - 0.32). keras_mtl names them only here
# and reads or replaces them only through `sublayer` and `replace_sublayer`,
# so a rename in keras-hub is fixed in this module.
FEEDFORWARD_INPUT = "_feedforward_intermediate_dense"
FEEDFORWARD_OUTPUT = "_feedforward_output_dense"

ATTENTION = "_self_attention_layer"
ATTENTION_NORM = "_self_attention_layer_norm"
ATTENTION_DROPOUT = "_self_attention_dropout"
FEEDFORWARD_NORM = "_feedforward_layer_norm"
FEEDFORWARD_DROPOUT = "_feedforward_dropout"
# Present (not None) in decoders with cross-attention.
CROSS_ATTENTION = "_cross_attention_layer"
# The projections of keras' `MultiHeadAttention` (keras 3.0 - 3.15).
QUERY = f"{ATTENTION}._query_dense"
KEY = f"{ATTENTION}._key_dense"
VALUE = f"{ATTENTION}._value_dense"

# Sub-layers that adapters can wrap, in the order their wrappers are
# visited (and saved). A dotted slot names a sub-layer of a sub-layer.
POSITIONS = (
    ATTENTION,
    QUERY,
    KEY,
    VALUE,
    ATTENTION_DROPOUT,
    FEEDFORWARD_INPUT,
    FEEDFORWARD_OUTPUT,
    FEEDFORWARD_NORM,
    FEEDFORWARD_DROPOUT,
)


def _block_classes():
    """keras-hub's encoder and decoder blocks (same sub-layer names)."""
    try:
        from keras_hub.layers import TransformerDecoder
        from keras_hub.layers import TransformerEncoder
    except ImportError as error:  # pragma: no cover - optional dependency
        raise ImportError(
            "keras_mtl.transfer needs keras-hub: `pip install keras-hub` "
            "(or `pip install keras-mtl[hub]`)."
        ) from error
    return TransformerEncoder, TransformerDecoder


def transformer_encoders(backbone):
    """The built transformer blocks of `backbone` (keras-hub
    `TransformerEncoder`s and `TransformerDecoder`s), in layer order."""
    if not isinstance(backbone, keras.layers.Layer):
        raise ValueError(
            "`backbone` must be a Keras model or layer containing "
            "`keras_hub.layers.TransformerEncoder` or `TransformerDecoder` "
            f"layers. Received: backbone={backbone!r}"
        )
    classes = _block_classes()
    encoders = [
        layer
        for layer in sublayers(backbone, include_self=True)
        if isinstance(layer, classes)
    ]
    if not encoders:
        raise ValueError(
            "Unsupported backbone: it contains no "
            "`keras_hub.layers.TransformerEncoder` or `TransformerDecoder` "
            "(supported: BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ALBERT, "
            "ELECTRA, GPT-2, ... and models built from these layers). "
            f"Received: backbone={type(backbone).__name__}"
            f"(name={backbone.name!r})"
        )
    unbuilt = [e.name for e in encoders if not e.built]
    if unbuilt:
        raise ValueError(
            "Adapters can only be added to built encoders; build the model "
            f"first (e.g. call it once). Unbuilt encoders: {unbuilt}"
        )
    return encoders


def is_decoder(block):
    """Whether `block` is a keras-hub `TransformerDecoder` (causal)."""
    return isinstance(block, _block_classes()[1])


def called_more_than_once(block):
    """Whether the functional graph calls `block` several times (ALBERT's
    shared layers)."""
    return call_count(block) > 1


def attention_options(options, cache, cache_update_index):
    """`options` plus keras-hub's `CachedMultiHeadAttention` cache
    arguments when given (a plain `MultiHeadAttention` takes none)."""
    if cache is not None or cache_update_index is not None:
        options = dict(options, cache=cache,
                       cache_update_index=cache_update_index)
    return options


def sublayer(encoder, slot):
    """The encoder's sub-layer in `slot` (one of the names above), or
    `None`. Along a dotted slot, layers marked `transparent` (wrappers that
    keep the wrapped layer as `layer`) are looked through."""
    names = slot.split(".")
    layer = encoder
    for depth, name in enumerate(names):
        layer = getattr(layer, name, None)
        while depth < len(names) - 1 and getattr(layer, "transparent", False):
            layer = layer.layer
    return layer


def has_feedforward(layer):
    """Whether `layer` has an encoder's two feed-forward dense layers."""
    return all(sublayer(layer, slot) is not None
               for slot in (FEEDFORWARD_INPUT, FEEDFORWARD_OUTPUT))


def replace_sublayer(encoder, slot, layer, untrack=None):
    """Puts `layer` in the encoder's `slot`; `untrack` (the layer it
    replaces, when nothing else keeps it) stops being one of the encoder's
    tracked sub-layers."""
    parent_slot, _, name = slot.rpartition(".")
    parent = sublayer(encoder, parent_slot) if parent_slot else encoder
    while getattr(parent, "transparent", False):
        parent = parent.layer
    with unlocked(parent):
        setattr(parent, name, layer)
        if untrack is not None:
            untrack_layer(parent, untrack)


def hidden_dim(encoder):
    """The feature size of a built `TransformerEncoder`."""
    layer = sublayer(encoder, FEEDFORWARD_OUTPUT)
    # `add_adapter_experts` wraps the dense layer and keeps it as `dense`;
    # an `AdapterWrapper` keeps it as `layer`.
    while not hasattr(layer, "units"):
        layer = getattr(layer, "dense", None) or layer.layer
    return layer.units


def input_dim(encoder, layer):
    """The feature size of the input of `layer`, a sub-layer of `encoder`:
    that of a projection's kernel, else the encoder's hidden size."""
    kernel = getattr(layer, "kernel", None)
    if kernel is not None:
        return int(kernel.shape[0])
    return hidden_dim(encoder)


def wrappers(backbone):
    """`(encoder_index, position, wrapper)` for every `AdapterWrapper`."""
    found = []
    for index, encoder in enumerate(transformer_encoders(backbone)):
        for position in POSITIONS:
            layer = sublayer(encoder, position)
            if isinstance(layer, AdapterWrapper):
                found.append((index, position, layer))
    return found


def wrappers_or_raise(backbone):
    found = wrappers(backbone)
    if not found:
        raise ValueError(
            "`backbone` has no adapters; call "
            "`keras_mtl.transfer.add_adapters(backbone, task_names)` first. "
            f"Received: backbone={type(backbone).__name__}"
            f"(name={backbone.name!r})"
        )
    return found


def check_known(found, name, argument, kinds=("adapters", "combiners")):
    """Raises unless `name` is a task (or combination) of the wrappers."""
    wrapper = found[0][2]
    known = []
    for kind in kinds:
        known += list(getattr(wrapper, kind))
    if name not in known:
        raise ValueError(
            f"Unknown {argument}: the backbone has {known}. "
            f"Received: {argument}={name!r}"
        )


def transfer_variables(found):
    """Variables of all adapters and combiners, deduplicated, in order."""
    seen = {}
    for _, _, wrapper in found:
        for layer in list(wrapper.adapters.values()) + list(
            wrapper.combiners.values()
        ):
            for variable in layer.weights:
                seen.setdefault(id(variable), variable)
    return list(seen.values())


def unit_variables(found, name):
    """Variables of the task adapter or combination `name`, deduplicated."""
    seen = {}
    for _, _, wrapper in found:
        layer = wrapper.adapters.get(name, wrapper.combiners.get(name))
        for variable in layer.weights:
            seen.setdefault(id(variable), variable)
    return list(seen.values())

