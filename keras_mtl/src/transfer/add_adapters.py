"""`add_adapters`: one bottleneck adapter per task in every encoder."""

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.bottleneck_adapter import BottleneckAdapter
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.adapter_wrapper import AdapterWrapper
from keras_mtl.src.transfer.adapter_wrapper import check_name
from keras_mtl.src.transfer.set_active_adapter import freeze_backbone_weights
from keras_mtl.src.transfer.set_active_adapter import set_active_adapter

# Published configurations (`adapters`' `SeqBnConfig` and `DoubleSeqBnConfig`,
# see `BottleneckAdapter.pfeiffer` / `.houlsby`).
CONFIGS = {
    "pfeiffer": {"reduction_factor": 16, "activation": "relu"},
    "houlsby": {"reduction_factor": 16, "activation": "swish"},
}


def positions(config, encoder):
    """`(attribute, placement)` pairs wrapped in `encoder` for `config`."""
    if config == "houlsby":
        return [
            ("_self_attention_dropout", "output"),
            ("_feedforward_dropout", "output"),
        ]
    if encoder.normalize_first:
        # Pre-LN blocks have no closing LayerNorm: the adapter sits on the
        # feed-forward output, before the residual addition.
        return [("_feedforward_dropout", "output")]
    return [("_feedforward_layer_norm", "post_norm")]


def task_name_list(task_names, argument="task_names"):
    """Validates a task name or list of names; returns a list."""
    if isinstance(task_names, str):
        task_names = [task_names]
    if not isinstance(task_names, (list, tuple)) or not task_names:
        raise ValueError(
            f"`{argument}` must be a non-empty list of strings. "
            f"Received: {argument}={task_names!r}"
        )
    for name in task_names:
        check_name(name, argument)
    duplicates = sorted({n for n in task_names if task_names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"`{argument}` contains duplicates {duplicates}. "
            f"Received: {argument}={list(task_names)!r}"
        )
    return list(task_names)


def existing_config(found):
    """The adapter configuration already present in a backbone, or None."""
    if not found:
        return None
    if any(position == "_self_attention_dropout" for _, position, _ in found):
        return "houlsby"
    return "pfeiffer"


@keras_mtl_export("keras_mtl.transfer.add_adapters")
def add_adapters(
    backbone,
    task_names,
    config="pfeiffer",
    reduction_factor=None,
    activation=None,
    hidden_units=None,
    freeze_backbone=True,
):
    """Adds one bottleneck adapter per task to every transformer encoder.

    Walks `backbone` (a keras-hub backbone such as `BertBackbone`,
    `RobertaBackbone`, `XLMRobertaBackbone`, `DistilBertBackbone`, or any
    model built from `keras_hub.layers.TransformerEncoder`), and wraps
    sub-layers of every encoder with an `AdapterWrapper` holding one
    `keras_mtl.layers.BottleneckAdapter` per task:

    - `config="pfeiffer"` (Pfeiffer et al., 2021; `adapters`' `SeqBnConfig`):
      one adapter per layer at the feed-forward output. In post-LN encoders
      (BERT, RoBERTa, ...) the closing LayerNorm is wrapped so that
      `s -> LN(s + A(LN(s)))`, with `s` the feed-forward output plus its
      residual and `LN` the pre-trained LayerNorm. In pre-LN encoders
      (`normalize_first=True`) the adapter is applied to the feed-forward
      output before the residual addition, `d -> d + A(d)`.
    - `config="houlsby"` (Houlsby et al., 2019; `DoubleSeqBnConfig`): two
      adapters per layer, after the attention and after the feed-forward
      sub-layer, `d -> d + A(d)` before each residual addition.

    The up-projections start at zero, so the backbone's outputs are
    unchanged at initialisation. Unless `freeze_backbone=False`, every
    variable of `backbone` that is not part of an adapter is frozen (its
    `trainable` flag is set to `False`, variable by variable; pass the
    backbone rather than a task model, whose head would be frozen too).
    Backbones that reuse one encoder layer several times (ALBERT) get one
    adapter per encoder layer object, shared like its weights. If `backbone`
    had no adapters yet, the first task of `task_names` becomes the active
    one (see `set_active_adapter`); otherwise the active one is kept. The
    function can be called again to add more tasks with the same `config`.

    Compile (or re-compile) the model that uses `backbone` afterwards:
    Keras fixes the list of trainable variables at compile time.

    Args:
        backbone: built Keras model (or layer) containing
            `keras_hub.layers.TransformerEncoder` layers.
        task_names: a task name or a list of distinct task names (strings
            without `/`).
        config: `"pfeiffer"` or `"houlsby"`. Defaults to `"pfeiffer"`.
        reduction_factor: bottleneck width is `hidden_dim // reduction_factor`.
            Defaults to `None`, i.e. 16 (the value of both configurations).
        activation: adapter activation. Defaults to `None`, i.e. `"relu"`
            for `"pfeiffer"` and `"swish"` for `"houlsby"`.
        hidden_units: optional bottleneck width that overrides
            `reduction_factor`. Defaults to `None`.
        freeze_backbone: whether to freeze every non-adapter variable of
            `backbone`. Defaults to `True`.

    Returns:
        `backbone`, modified in place.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(
    ...     backbone, ["sst2", "mnli"], reduction_factor=4)
    >>> # trainable: the 2 x 148 weights of the active "sst2" adapters
    >>> keras_mtl.transfer.count_transfer_parameters(backbone)
    296

    Reference:
        - [Pfeiffer et al., 2021](https://arxiv.org/abs/2005.00247)
        - [Houlsby et al., 2019](https://arxiv.org/abs/1902.00751)
    """
    if config not in CONFIGS:
        raise ValueError(
            f"`config` must be one of {sorted(CONFIGS)}. "
            f"Received: config={config!r}"
        )
    task_names = task_name_list(task_names)
    encoders = backbone_walk.transformer_encoders(backbone)
    found = backbone_walk.wrappers(backbone)
    present = existing_config(found)
    if present is not None and present != config:
        raise ValueError(
            f"`backbone` already has {present!r} adapters; new tasks must "
            f"use the same configuration. Received: config={config!r}"
        )
    if found:
        taken = [n for n in task_names if n in found[0][2].names]
        if taken:
            raise ValueError(
                f"`backbone` already has adapters or combinations named "
                f"{taken}. Received: task_names={task_names!r}"
            )
    adapter_kwargs = {
        "reduction_factor": CONFIGS[config]["reduction_factor"]
        if reduction_factor is None
        else reduction_factor,
        "activation": CONFIGS[config]["activation"]
        if activation is None
        else activation,
        "hidden_units": hidden_units,
        "residual": False,
    }
    # Fails early (before touching the backbone) on bad adapter arguments.
    BottleneckAdapter(**adapter_kwargs)

    for encoder in encoders:
        dim = backbone_walk.hidden_dim(encoder)
        for attribute, placement in positions(config, encoder):
            wrapper = getattr(encoder, attribute)
            if not isinstance(wrapper, AdapterWrapper):
                inner = wrapper
                wrapper = AdapterWrapper(
                    inner, placement=placement, name=f"{inner.name}_adapters"
                )
                wrapper.build((None, None, dim))
                backbone_walk.replace_sublayer(encoder, attribute, wrapper)
            for task in task_names:
                wrapper.add_adapter(
                    task,
                    BottleneckAdapter(
                        **adapter_kwargs,
                        dtype=wrapper.dtype_policy,
                        name=f"{task}_adapter",
                    ),
                )
    found = backbone_walk.wrappers(backbone)
    if freeze_backbone:
        freeze_backbone_weights(backbone, found)
    active = found[0][2].active
    set_active_adapter(backbone, task_names[0] if active is None else active)
    return backbone
