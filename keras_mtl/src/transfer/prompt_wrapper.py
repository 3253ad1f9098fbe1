"""`PromptWrapper`: prompt positions carried through every block.

Prompt tuning runs the model on `[P; X]`. keras_mtl does not change the
backbone's functional graph; instead, the attention layer of every block
is wrapped so that it attends over `[prompt state; x]`, and the wrapper
runs the rest of the block (norms, feed-forward, residuals) on the prompt
rows itself, leaving the new prompt state for the next block's wrapper.
The input rows get exactly what the block would give them inside `[P; X]`;
the prompt rows are dropped after the last block.
"""

from keras import ops

from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.adapter_wrapper import AdapterWrapper


class _Links:
    """The block and the shared prompt state (not tracked by Keras)."""

    block = None
    stream = None


class _Stream:
    """The prompt state between blocks, within one call of the model."""

    value = None


class PromptWrapper(AdapterWrapper):
    """An `AdapterWrapper` around a block's self-attention layer that
    carries soft prompts (`keras_mtl.layers.PromptAdapter`) through it.

    Made by `add_adapters(..., config="prompt_tuning")` and linked to its
    block by `link_prompts`; not meant to be used on its own."""

    placements = ("prompt",)
    transparent = True  # `backbone_walk.sublayer` looks through it

    def __init__(self, layer, placement="prompt", **kwargs):
        super().__init__(layer, placement=placement, **kwargs)
        self._links = _Links()

    def link(self, block, stream):
        self._links.block = block
        self._links.stream = stream

    def build(self, input_shape):
        shape = (None, None, input_shape[-1])
        self._adapter_shape = self._delta_shape = shape
        for adapter in self.adapters.values():
            if not adapter.built:
                adapter.build(shape)
                self._remember_non_trainable(adapter)

    def check_active(self, name):
        if name is not None and not isinstance(name, str):
            raise ValueError(
                "Prompt tuning runs one task's prompt at a time; it takes "
                f"no composition. Received: name={name!r}")
        super().check_active(name)

    def add_combiner(self, name, combiner, sources):
        raise ValueError(
            "Prompts run with the sequence, they are not combined: a "
            f"prompt wrapper takes no combinations. Received: name={name!r}")

    def call(self, query, value, key=None, attention_mask=None, cache=None,
             cache_update_index=None, training=None, **options):
        # `cache` and `cache_update_index`: keras-hub's
        # `CachedMultiHeadAttention`; `options` holds Python flags only.
        if self.active is None:
            options = backbone_walk.attention_options(options, cache,
                                                      cache_update_index)
            return self.layer(query, value, key=key,
                              attention_mask=attention_mask,
                              training=training, **options)
        if cache is not None or options.get("return_attention_scores"):
            raise ValueError(
                "Prompt tuning supports neither cached decoding nor "
                "returned attention scores.")
        block, stream = self._links.block, self._links.stream
        adapter = self.adapters[self.active]
        state = adapter(query) if adapter.start else stream.value
        norm = backbone_walk.sublayer(block, backbone_walk.ATTENTION_NORM)
        rows = norm(state) if block.normalize_first else state
        length = adapter.prompt_length
        joint = ops.concatenate([ops.cast(rows, query.dtype), query], axis=1)
        mask = _joint_mask(attention_mask, query, length,
                           backbone_walk.is_decoder(block))
        attended = self.layer(joint, joint, attention_mask=mask,
                              training=training)
        stream.value = _finish_block(block, state, attended[:, :length],
                                     training)
        return attended[:, length:]

    def compute_output_shape(self, query_shape, value_shape=None,
                             key_shape=None):
        return self.layer.compute_output_shape(
            query_shape, query_shape if value_shape is None else value_shape,
            key_shape)


def _joint_mask(mask, query, length, causal):
    """The `(batch, l + T, l + S)` mask over `[prompt; x]`: input rows see
    the prompt and what `mask` allows; prompt rows see the prompt and
    (encoders) the unmasked keys, or (decoders) earlier prompt positions
    only."""
    if mask is None and not causal:
        return None
    rows = ops.ones_like(query[..., :1], dtype="int32")  # (B, T, 1)
    if mask is None:
        steps = ops.arange(ops.shape(query)[1])
        mask = ops.cast(steps[:, None] >= steps[None, :], "int32")[None]
    mask = rows * ops.cast(mask, "int32")  # (B, T, S)
    ones = ops.ones_like(mask[:, :1, :1])  # (B, 1, 1)
    see_prompt = ops.repeat(ops.repeat(ones, length, axis=1), length, axis=2)
    if causal:
        order = ops.arange(length)
        see_prompt = see_prompt * ops.cast(
            order[:, None] >= order[None, :], "int32")[None]
        prompt_to_x = ops.repeat(ops.zeros_like(mask[:, :1, :]), length,
                                 axis=1)
    else:
        prompt_to_x = ops.repeat(mask[:, :1, :], length, axis=1)
    x_to_prompt = ops.repeat(rows, length, axis=2)
    return ops.concatenate(
        [ops.concatenate([see_prompt, prompt_to_x], axis=2),
         ops.concatenate([x_to_prompt, mask], axis=2)], axis=1)


def _finish_block(block, state, attended, training):
    """The rest of a keras-hub block (after self-attention) on the prompt
    rows: dropout, residual, norms and the feed-forward sub-layer, with the
    block's own (possibly adapted) sub-layers."""

    def run(slot, x, **kwargs):
        return backbone_walk.sublayer(block, slot)(x, **kwargs)

    x = run(backbone_walk.ATTENTION_DROPOUT, attended, training=training)
    x = x + state
    if not block.normalize_first:
        x = run(backbone_walk.ATTENTION_NORM, x)
    residual = x
    if block.normalize_first:
        x = run(backbone_walk.FEEDFORWARD_NORM, x)
    x = run(backbone_walk.FEEDFORWARD_OUTPUT,
            run(backbone_walk.FEEDFORWARD_INPUT, x))
    x = run(backbone_walk.FEEDFORWARD_DROPOUT, x, training=training)
    x = x + residual
    if not block.normalize_first:
        x = run(backbone_walk.FEEDFORWARD_NORM, x)
    return x


def check_block(block):
    """Raises unless prompts can run through `block`."""
    attention = backbone_walk.sublayer(block, backbone_walk.ATTENTION)
    if backbone_walk.sublayer(block, backbone_walk.CROSS_ATTENTION) is not None:
        raise ValueError(
            f"Prompt tuning supports encoder and decoder-only blocks; "
            f"{block.name!r} has cross-attention.")
    if backbone_walk.called_more_than_once(block):
        raise ValueError(
            f"Prompt tuning needs one call per block; {block.name!r} is "
            "called several times (shared layers, as in ALBERT).")
    if not isinstance(attention, PromptWrapper) and not hasattr(
            attention, "num_heads"):
        raise ValueError(
            f"Block {block.name!r} has {backbone_walk.ATTENTION}="
            f"{attention!r}, which prompt tuning cannot wrap.")


def link_prompts(backbone):
    """Connects the prompt wrappers of `backbone`, in block order, to their
    blocks and one shared prompt state."""
    blocks = backbone_walk.transformer_encoders(backbone)
    stream = _Stream()
    for block in blocks:
        wrapper = backbone_walk.sublayer(block, backbone_walk.ATTENTION)
        if isinstance(wrapper, PromptWrapper):
            wrapper.link(block, stream)


def wrapper_class(placement):
    """The wrapper class for `placement`."""
    return PromptWrapper if placement == "prompt" else AdapterWrapper
