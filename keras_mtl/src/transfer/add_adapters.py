"""`add_adapters`: one adapter per task in every encoder."""

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.bottleneck_adapter import BottleneckAdapter
from keras_mtl.src.layers.compacter_adapter import CompacterAdapter
from keras_mtl.src.layers.hyper_adapter import HyperAdapter
from keras_mtl.src.layers.ia3_adapter import IA3Adapter
from keras_mtl.src.layers.lora_adapter import LoRAAdapter
from keras_mtl.src.layers.parallel_adapter import ParallelAdapter
from keras_mtl.src.layers.prefix_adapter import PrefixAdapter
from keras_mtl.src.layers.prompt_adapter import PromptAdapter
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer import companion_layers
from keras_mtl.src.transfer.adapter_configs import SUBLAYERS
from keras_mtl.src.transfer.adapter_configs import TARGETS
from keras_mtl.src.transfer.adapter_configs import BottleneckConfig
from keras_mtl.src.transfer.adapter_configs import CompacterConfig
from keras_mtl.src.transfer.adapter_configs import ConfigUnion
from keras_mtl.src.transfer.adapter_configs import HyperConfig
from keras_mtl.src.transfer.adapter_configs import IA3Config
from keras_mtl.src.transfer.adapter_configs import LoRAConfig
from keras_mtl.src.transfer.adapter_configs import ParallelConfig
from keras_mtl.src.transfer.adapter_configs import PrefixTuningConfig
from keras_mtl.src.transfer.adapter_configs import PromptTuningConfig
from keras_mtl.src.transfer.adapter_configs import resolve_config
from keras_mtl.src.transfer.adapter_wrapper import AdapterWrapper
from keras_mtl.src.transfer.adapter_wrapper import check_name
from keras_mtl.src.transfer.prompt_wrapper import link_prompts
from keras_mtl.src.transfer.prompt_wrapper import wrapper_class
from keras_mtl.src.transfer.set_active_adapter import freeze_backbone_weights
from keras_mtl.src.transfer.set_active_adapter import set_active_adapter


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


# Adapter classes and the kind of config that makes them (subclasses
# first: a `ParallelAdapter` is also a bottleneck).
KINDS = (
    (LoRAAdapter, "lora"),
    (IA3Adapter, "ia3"),
    (ParallelAdapter, "parallel"),
    (CompacterAdapter, "compacter"),
    (PrefixAdapter, "prefix_tuning"),
    (PromptAdapter, "prompt_tuning"),
    (HyperAdapter, "hyper"),
    (BottleneckAdapter, "bottleneck"),
)


def _kind(adapter):
    for cls, kind in KINDS:
        if isinstance(adapter, cls):
            return kind
    raise ValueError(f"Unknown adapter class: {type(adapter).__name__}")


def _part_config(kind, group):
    """The config that made `group`, `[(encoder_index, slot, adapter)]`,
    the adapters of one kind of one task."""
    adapter = group[0][2]
    arguments = adapter.get_config()
    first_encoder = group[0][0]
    slots = [slot for index, slot, _ in group if index == first_encoder]
    houlsby = any(slot == "_self_attention_dropout" for _, slot, _ in group)
    targets = [t for t, slot in TARGETS.items() if slot in slots]
    if kind == "lora":
        return LoRAConfig(rank=arguments["rank"], alpha=arguments["alpha"],
                          targets=targets, dropout=arguments["dropout"])
    if kind == "ia3":
        return IA3Config(targets=targets)
    if kind == "compacter":
        return CompacterConfig(
            "compacter" if houlsby else "compacter++",
            arguments["reduction_factor"], arguments["activation"],
            adapter.rule.phm_dim, arguments["phm_rank"])
    if kind == "parallel":
        return ParallelConfig(
            arguments["reduction_factor"], arguments["scaling"],
            arguments["activation"], arguments["hidden_units"],
            sublayers=[s for s, slot in SUBLAYERS.items() if slot in slots])
    if kind == "prefix_tuning":
        generator = adapter.generator
        if generator is None:
            return PrefixTuningConfig(adapter.prefix_length, flat=True)
        return PrefixTuningConfig(
            adapter.prefix_length, generator.bottleneck_size,
            keras.activations.serialize(generator.activation))
    if kind == "hyper":
        net = adapter.hypernetwork
        return HyperConfig(net.reduction_factor, net.embedding_dim,
                           net.projection_dim, arguments["activation"])
    if kind == "prompt_tuning":
        return PromptTuningConfig(adapter.prompt_length, keras.initializers
                                  .serialize(adapter.initializer))
    return BottleneckConfig("houlsby" if houlsby else "pfeiffer",
                            arguments["reduction_factor"],
                            arguments["activation"],
                            arguments["hidden_units"])


def config_of(found, task_name=None):
    """The adapter config that made the adapters of `task_name` (default:
    the first task) in a backbone's wrappers `found` (a `ConfigUnion` if
    they are of several kinds), or None."""
    if not found:
        return None
    adapters = found[0][2].adapters
    task = task_name or next(iter(adapters))
    groups = {}
    for index, slot, wrapper in found:
        adapter = wrapper.adapters[task]
        groups.setdefault(_kind(adapter), []).append((index, slot, adapter))
    parts = [_part_config(kind, group) for kind, group in groups.items()]
    return parts[0] if len(parts) == 1 else ConfigUnion(*parts)


def existing_config(found):
    """The name of the adapter configuration already in a backbone, or
    None."""
    config = config_of(found)
    return None if config is None else config.name


def common_layers(config, encoders, found):
    """The dict of layers that all tasks' adapters share (`make_adapter`'s
    `shared["common"]`): those of the adapters already in the backbone."""
    common = {"num_blocks": len(encoders)}
    for _, _, wrapper in found:
        for adapter in wrapper.adapters.values():
            common.update(config.reused_layers(adapter))
    return common


def probe_adapters(config, encoders, found=()):
    """`[(encoder_index, slot, adapter), ...]`: one adapter per site that
    `config` would add, made and built on the side (not attached), so that
    bad sizes fail before a backbone changes."""
    order = {slot: k for k, slot in enumerate(backbone_walk.POSITIONS)}
    shared = {"common": common_layers(config, encoders, found)}
    probes = []
    for index, encoder in enumerate(encoders):
        for slot, placement in sorted(config.sites(encoder),
                                      key=lambda site: order[site[0]]):
            layer = backbone_walk.sublayer(encoder, slot)
            if isinstance(layer, AdapterWrapper):
                layer = layer.layer
            # A new wrapper takes the dtype policy of the layer it wraps.
            probe = wrapper_class(placement)(layer, placement=placement)
            probe.build((None, None, backbone_walk.input_dim(encoder, layer)))
            adapter = config.make_adapter(encoder, slot, name="probe",
                                          dtype=probe.dtype_policy,
                                          shared=shared)
            probe.add_adapter("probe", adapter)
            probes.append((index, slot, adapter))
    return probes


def positions(config, encoders):
    """`[(encoder_index, slot), ...]` that `config` wraps, in walk order."""
    order = {slot: k for k, slot in enumerate(backbone_walk.POSITIONS)}
    return [
        (index, slot)
        for index, encoder in enumerate(encoders)
        for slot, _ in sorted(config.sites(encoder), key=lambda s: order[s[0]])
    ]


@keras_mtl_export("keras_mtl.transfer.add_adapters")
def add_adapters(
    backbone,
    task_names,
    config="pfeiffer",
    reduction_factor=None,
    activation=None,
    hidden_units=None,
    freeze_backbone=True,
    shared=False,
):
    """Adds one adapter per task to every transformer encoder.

    Walks `backbone` (a keras-hub backbone such as `BertBackbone`,
    `RobertaBackbone`, `XLMRobertaBackbone`, `DistilBertBackbone`,
    `GPT2Backbone`, or any model built from
    `keras_hub.layers.TransformerEncoder` or `TransformerDecoder`), and
    wraps sub-layers of every block with an `AdapterWrapper` holding one adapter
    per task. `config` chooses the method:

    - `"pfeiffer"` (Pfeiffer et al., 2021; `adapters`' `SeqBnConfig`): one
      bottleneck adapter per layer at the feed-forward output. In post-LN
      encoders (BERT, RoBERTa, ...) the closing LayerNorm is wrapped so
      that `s -> LN(s + A(LN(s)))`, with `s` the feed-forward output plus
      its residual and `LN` the pre-trained LayerNorm. In pre-LN encoders
      (`normalize_first=True`) the adapter is applied to the feed-forward
      output before the residual addition, `d -> d + A(d)`.
    - `"houlsby"` (Houlsby et al., 2019; `DoubleSeqBnConfig`): two
      bottleneck adapters per layer, after the attention and after the
      feed-forward sub-layer, `d -> d + A(d)` before each residual addition.
    - `"lora"` (Hu et al., 2022): `keras_mtl.layers.LoRAAdapter`s beside
      the query and value projections, rank 8 (`LoRAConfig`).
    - `"ia3"` (Liu et al., 2022): `keras_mtl.layers.IA3Adapter`s rescaling
      the keys, values and feed-forward activations (`IA3Config`).
    - `"parallel"` (He et al., 2022): scaled parallel adapters beside the
      feed-forward block, `F(x) + 4 A(x)` (`ParallelConfig`, also beside
      the attention block).
    - `"compacter"` / `"compacter++"` (Mahabadi et al., 2021): bottleneck
      adapters with PHM projections and one shared rule set per task, at
      Houlsby's or Pfeiffer's positions (`CompacterConfig`).
    - `"prefix_tuning"` (Li & Liang, 2021): learned keys and values
      prepended in every attention layer, generated in training by a
      per-task MLP that `eject_prefix` drops (`PrefixTuningConfig`).
    - `"mam"` (He et al., 2022): prefix tuning plus a scaled parallel
      adapter beside the feed-forward block (`MAMConfig`).
    - `"prompt_tuning"` (Lester et al., 2021): soft prompt vectors before
      the input of the first block, carried through every block
      (`PromptTuningConfig`).
    - a config object (`BottleneckConfig`, `LoRAConfig`, `IA3Config`,
      `ParallelConfig`, `CompacterConfig`, `PrefixTuningConfig`,
      `PromptTuningConfig`, `MAMConfig`) for other sizes and targets, or a
      `ConfigUnion` of several.

    Every method but prefix and prompt tuning starts at the backbone's own
    function (zero up-projection, zero `B`, unit scales), so outputs are
    unchanged at initialisation; `set_active_adapter(backbone, None)`
    restores it for all. Unless `freeze_backbone=False`, every variable of
    `backbone` that is not part of an adapter is frozen (its `trainable`
    flag is set to `False`, variable by variable; pass the backbone rather
    than a task model, whose head would be frozen too). Backbones that reuse
    one encoder layer several times (ALBERT) get one adapter per encoder
    layer object, shared like its weights. If `backbone` had no adapters
    yet, the first task of `task_names` becomes the active one (see
    `set_active_adapter`); otherwise the active one is kept. The function
    can be called again to add more tasks with the same kind of
    configuration and positions.

    Compile (or re-compile) the model that uses `backbone` afterwards:
    Keras fixes the list of trainable variables at compile time.

    Args:
        backbone: built Keras model (or layer) containing
            `keras_hub.layers.TransformerEncoder` or `TransformerDecoder`
            layers (decoders: self-attention only is adapted).
        task_names: a task name or a list of distinct task names (strings
            without `/`).
        config: `"pfeiffer"`, `"houlsby"`, `"lora"`, `"ia3"`,
            `"parallel"`, `"compacter"`, `"compacter++"`,
            `"prefix_tuning"`, `"mam"`, `"prompt_tuning"` or a config
            object.
            Defaults to `"pfeiffer"`.
        reduction_factor: for `"pfeiffer"`/`"houlsby"`, the bottleneck width
            is `hidden_dim // reduction_factor`. Defaults to `None`, i.e.
            16 (the value of both configurations).
        activation: bottleneck adapter activation. Defaults to `None`, i.e.
            `"relu"` for `"pfeiffer"` and `"swish"` for `"houlsby"`.
        hidden_units: optional bottleneck width that overrides
            `reduction_factor`. Defaults to `None`.
        freeze_backbone: whether to freeze every non-adapter variable of
            `backbone`. Defaults to `True`.
        shared: if `True`, the tasks of `task_names` share one adapter at
            every site (VL-Adapter's single shared adapter): each name can
            be activated, composed (e.g. `Parallel` with one head per task
            in a `MultiTaskModel`) and saved, and all train the same
            weights. Defaults to `False`.

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
    >>> lora = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(
    ...     lora, "sst2", config=keras_mtl.transfer.LoRAConfig(rank=2))
    >>> keras_mtl.transfer.count_transfer_parameters(lora)  # 2 x 2 x 2(16+16)
    256

    Reference:
        - [Pfeiffer et al., 2021](https://arxiv.org/abs/2005.00247)
        - [Houlsby et al., 2019](https://arxiv.org/abs/1902.00751)
        - [Hu et al., 2022](https://arxiv.org/abs/2106.09685)
        - [Liu et al., 2022](https://arxiv.org/abs/2205.05638)
        - [He et al., 2022](https://arxiv.org/abs/2110.04366)
        - [Li & Liang, 2021](https://arxiv.org/abs/2101.00190)
    """
    config = resolve_config(config, reduction_factor, activation,
                            hidden_units)
    task_names = task_name_list(task_names)
    if not isinstance(shared, bool):
        raise ValueError(
            f"`shared` must be a bool. Received: shared={shared!r}")
    encoders = backbone_walk.transformer_encoders(backbone)
    found = backbone_walk.wrappers(backbone)
    present = existing_config(found)
    if present is not None and present != config.name:
        raise ValueError(
            f"`backbone` already has {present!r} adapters; new tasks must "
            f"use the same kind of configuration. Received: config={config!r}"
        )
    if found:
        wanted = positions(config, encoders)
        if [(i, p) for i, p, _ in found] != wanted:
            raise ValueError(
                f"`backbone` has adapters at {[(i, p) for i, p, _ in found]}"
                f"; new tasks must use the same positions. Received: "
                f"config={config!r}"
            )
        taken = [n for n in task_names if n in found[0][2].names]
        if taken:
            raise ValueError(
                f"`backbone` already has adapters or combinations named "
                f"{taken}. Received: task_names={task_names!r}"
            )
    for encoder in encoders:
        for slot, placement in config.sites(encoder):
            layer = backbone_walk.sublayer(encoder, slot)
            if layer is None or not isinstance(
                layer, (AdapterWrapper, keras.layers.Dense,
                        keras.layers.EinsumDense, keras.layers.Dropout,
                        keras.layers.LayerNormalization,
                        keras.layers.MultiHeadAttention)
            ):
                raise ValueError(
                    f"Encoder {encoder.name!r} has {slot}={layer!r}, which "
                    f"{config.name!r} adapters cannot wrap (adapter experts "
                    "already sit there?)."
                )
            if not isinstance(layer, AdapterWrapper):
                companion_layers.check(encoder, slot, placement)
        config.check_sites(encoder)
    try:
        probe_adapters(config, encoders, found)
    except ValueError as error:
        raise ValueError(
            f"{config!r} does not fit this backbone: {error}") from error

    # Per task: layers all its adapters share; "common": those of all tasks.
    common = common_layers(config, encoders, found)
    per_task = {task: {"common": common} for task in task_names}
    for encoder in encoders:
        for slot, placement in config.sites(encoder):
            wrapper = backbone_walk.sublayer(encoder, slot)
            if not isinstance(wrapper, AdapterWrapper):
                inner = wrapper
                input_dim = backbone_walk.input_dim(encoder, inner)
                wrapper = wrapper_class(placement)(
                    inner, placement=placement, name=f"{inner.name}_adapters")
                wrapper.build((None, None, input_dim))
                backbone_walk.replace_sublayer(encoder, slot, wrapper)
                companion_layers.attach(encoder, slot, wrapper)
            first = None
            for task in task_names:
                adapter = first if shared else None
                if adapter is None:
                    adapter = config.make_adapter(
                        encoder, slot, name=f"{task}_adapter",
                        dtype=wrapper.dtype_policy,
                        shared=per_task[task])
                first = first or adapter
                wrapper.add_adapter(task, adapter)
    link_prompts(backbone)
    found = backbone_walk.wrappers(backbone)
    if freeze_backbone:
        freeze_backbone_weights(backbone, found)
    active = found[0][2].active
    set_active_adapter(backbone, task_names[0] if active is None else active)
    return backbone
