"""Extending the attention mask over prefix keys (private).

Prefix tuning prepends `l` learned positions to an attention layer's keys
and values (`AdapterWrapper(placement="prefix")` on its key and value
projections). The mask the encoder passes covers the sequence only;
`PrefixedAttention`, around the attention layer, lets every query see the
prefix by prepending `l` columns of ones to it.
"""

import keras
from keras import ops

from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.adapter_wrapper import AdapterWrapper


class _Source:
    """The key wrapper, held where Keras' attribute tracking ignores it."""

    def __init__(self, wrapper):
        self.wrapper = wrapper


class PrefixedAttention(keras.layers.Layer):
    """Wraps an attention layer: pads its mask for the active prefix.

    Internal and not serialised: `describe_transfer` records the prefix
    wrappers, and `restore_transfer` re-inserts this layer with them.
    `backbone_walk.sublayer` sees through it (`transparent`)."""

    transparent = True

    def __init__(self, layer, key_wrapper, **kwargs):
        super().__init__(dtype=layer.dtype_policy, **kwargs)
        self.layer = layer
        self._source = _Source(key_wrapper)

    def build(self, *args, **kwargs):
        pass  # the wrapped layer is built

    def call(self, query, value, key=None, attention_mask=None, cache=None,
             cache_update_index=None, training=None, **options):
        # `cache` and `cache_update_index`: keras-hub's
        # `CachedMultiHeadAttention`; `options` holds Python flags only.
        length = self._source.wrapper.prefix_length
        if length and options.get("use_causal_mask"):
            raise ValueError(
                "Prefix tuning needs an explicit attention mask; "
                "`use_causal_mask=True` would align the causal mask with "
                "the prefix positions.")
        if length and cache is not None:
            raise ValueError(
                "Prefix tuning does not support cached (step-by-step) "
                "decoding: the prefixes would be written into the cache. "
                "Decode without a cache, or with another adapter kind.")
        if length and attention_mask is not None:
            ones = ops.ones_like(attention_mask[..., :1])
            attention_mask = ops.concatenate(
                [ops.repeat(ones, length, axis=-1), attention_mask], axis=-1)
        options = backbone_walk.attention_options(options, cache,
                                                  cache_update_index)
        return self.layer(query, value, key=key,
                          attention_mask=attention_mask, training=training,
                          **options)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)


def check_attention(encoder):
    """Raises unless `encoder`'s attention layer can take prefixes."""
    layer = backbone_walk.sublayer(encoder, backbone_walk.ATTENTION)
    if isinstance(layer, PrefixedAttention):
        return
    # keras-hub decoders use `CachedMultiHeadAttention`, a subclass.
    if not isinstance(layer, keras.layers.MultiHeadAttention):
        raise ValueError(
            f"Prefix tuning extends the keys and values of a "
            f"`keras.layers.MultiHeadAttention`; encoder {encoder.name!r} "
            f"has {backbone_walk.ATTENTION}={layer!r}.")
    for slot in (backbone_walk.KEY, backbone_walk.VALUE):
        projection = backbone_walk.sublayer(encoder, slot)
        projection = getattr(projection, "layer", projection)
        if len(projection.compute_output_shape((None, None, 1))) != 4:
            raise ValueError(
                f"Prefix tuning needs (batch, seq, heads, dim) keys and "
                f"values; encoder {encoder.name!r} has {slot}={projection!r}.")


def attach(encoder, key_wrapper):
    """Wraps `encoder`'s attention layer for the prefixes of
    `key_wrapper` (the `"prefix"` wrapper of its key projection)."""
    inner = backbone_walk.sublayer(encoder, backbone_walk.ATTENTION)
    backbone_walk.replace_sublayer(
        encoder, backbone_walk.ATTENTION,
        PrefixedAttention(inner, key_wrapper, name=f"{inner.name}_prefixed"))


def detach(encoder):
    """Removes the layer `attach` inserted."""
    outer = backbone_walk.sublayer(encoder, backbone_walk.ATTENTION)
    if isinstance(outer, PrefixedAttention):
        backbone_walk.replace_sublayer(encoder, backbone_walk.ATTENTION,
                                       outer.layer, untrack=outer)


def is_prefix_key(slot, wrapper):
    """Whether `wrapper` (at `slot`) is the key wrapper `attach` needs."""
    return (isinstance(wrapper, AdapterWrapper)
            and wrapper.placement == "prefix" and slot == backbone_walk.KEY)
