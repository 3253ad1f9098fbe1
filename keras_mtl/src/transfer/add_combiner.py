"""`add_combiner`: learn to combine frozen source adapters."""

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.adapter_fusion import AdapterFusion
from keras_mtl.src.layers.average_combiner import AverageCombiner
from keras_mtl.src.layers.scalearn import ScaLearn
from keras_mtl.src.layers.scalearn_scales import ScaLearnScales
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.adapter_wrapper import check_name
from keras_mtl.src.transfer.add_adapters import existing_config
from keras_mtl.src.transfer.add_adapters import task_name_list
from keras_mtl.src.transfer.set_active_adapter import set_active_adapter

COMBINERS = (
    "scalearn",
    "scalearn_uniform",
    "scalearn_plus_plus",
    "scalearn_uniform_plus_plus",
    "adapter_fusion",
    "average",
)


def combiner_factory(combiner, num_sources, kwargs):
    """A function returning the combiner of one adapter position.

    ScaLearn variants follow Frohmann et al. (2024), Sec. 3 and the
    `CPJKU/ScaLearn` configurations `scalearn_2_avg_d03`,
    `scalearnUniform_2_avg_d03`, `scalearnPP_2_avg_d03` and
    `scalearnUniformPP_2_avg_d00`: vector or scalar scales, per layer or
    one set shared by every layer ("++"), dropout 0.3 on the scales except
    0.0 for ScaLearnUniform++.
    """
    if combiner == "adapter_fusion":
        return lambda name: AdapterFusion(name=name, **kwargs)
    if combiner == "average":
        return lambda name: AverageCombiner(name=name, **kwargs)
    mode = "scalar" if "uniform" in combiner else "vector"
    options = {"mode": mode, **kwargs}
    if combiner == "scalearn_uniform_plus_plus":
        options.setdefault("dropout", 0.0)
    if not combiner.endswith("plus_plus"):
        return lambda name: ScaLearn(num_sources, name=name, **options)
    shared = ScaLearnScales(
        num_sources,
        mode=mode,
        **{
            key: options[key]
            for key in ("init_scale", "init_stddev", "seed")
            if key in options
        },
        name="shared_scales",
    )
    return lambda name: ScaLearn(
        num_sources, shared_scales=shared, name=name, **options
    )


@keras_mtl_export("keras_mtl.transfer.add_combiner")
def add_combiner(
    backbone,
    source_task_names,
    combiner="scalearn",
    name=None,
    combiner_kwargs=None,
):
    """Adds a learned combination of frozen source adapters.

    At every adapter position of `backbone` (prepared with `add_adapters`),
    adds one combiner over the adapters of `source_task_names`, evaluated on
    the same hidden state `h` as in the Pfeiffer placement:
    `s -> LN(s + Combine([A_i(h) for i in sources], query=h))`,
    `h = LN(s)`. The combination becomes the active one (see
    `set_active_adapter`): the source adapters and the rest of the backbone
    are frozen and `backbone.trainable_weights` are exactly the combiner's
    transfer parameters.

    `combiner` is one of:

    - `"scalearn"`: ScaLearn, a learned vector of scales per source and
      layer (`N d L` parameters; Frohmann et al., 2024);
    - `"scalearn_uniform"`: one scalar per source and layer (`N L`);
    - `"scalearn_plus_plus"`: one vector per source shared by all layers
      (`N d`);
    - `"scalearn_uniform_plus_plus"`: one scalar per source shared by all
      layers (`N`), without dropout on the scales;
    - `"adapter_fusion"`: AdapterFusion attention over the sources
      (Pfeiffer et al., 2021; `3 d^2 + 2 d` per layer);
    - `"average"`: the plain mean of the source outputs (no parameters);
      the only combination of LoRA and (IA)^3 adapters (output averaging,
      as `adapters`' `Average` composition).

    As in ScaLearn, `source_task_names` usually includes the target task's
    own adapter. Compile (or re-compile) the model that uses `backbone`
    afterwards.

    Args:
        backbone: a model prepared with `add_adapters`.
        source_task_names: list of distinct task names of `add_adapters`.
        combiner: one of the names above. Defaults to `"scalearn"`.
        name: name of the combination, used by `set_active_adapter` and
            `count_transfer_parameters`. Defaults to `None`, i.e. the value
            of `combiner`.
        combiner_kwargs: optional dict of extra arguments for the combiner
            layers (`keras_mtl.layers.ScaLearn`, `AdapterFusion` or
            `AverageCombiner`), e.g. `{"dropout": 0.1}`.

    Returns:
        `backbone`, modified in place.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(
    ...     backbone, ["sst2", "mnli", "rte"], reduction_factor=4)
    >>> _ = keras_mtl.transfer.add_combiner(
    ...     backbone, ["sst2", "mnli", "rte"], "scalearn_uniform")
    >>> keras_mtl.transfer.count_transfer_parameters(backbone)  # 3 x 2
    6

    Reference:
        - [Frohmann et al., 2024](https://arxiv.org/abs/2310.01217)
        - [Pfeiffer et al., 2021](https://arxiv.org/abs/2005.00247)
    """
    if combiner not in COMBINERS:
        raise ValueError(
            f"`combiner` must be one of {list(COMBINERS)}. "
            f"Received: combiner={combiner!r}"
        )
    if combiner_kwargs is None:
        combiner_kwargs = {}
    if not isinstance(combiner_kwargs, dict):
        raise ValueError(
            "`combiner_kwargs` must be a dict or None. "
            f"Received: combiner_kwargs={combiner_kwargs!r}"
        )
    name = check_name(combiner if name is None else name, "name")
    sources = task_name_list(source_task_names, "source_task_names")
    found = backbone_walk.wrappers_or_raise(backbone)
    for source in sources:
        backbone_walk.check_known(
            found, source, "source_task_names", kinds=("adapters",)
        )
    kind = existing_config(found)
    if any(wrapper.placement == "prefix" for _, _, wrapper in found):
        raise ValueError(
            f"Prefixes are concatenated, not combined: the backbone has "
            f"{kind!r} adapters, whose prefixes no combiner takes. "
            f"Received: combiner={combiner!r}"
        )
    if combiner != "average" and ({"lora", "ia3"} & set(kind.split("+"))):
        raise ValueError(
            f"{combiner!r} combines bottleneck adapters (one feature vector "
            f"per token); the backbone has {kind!r} adapters, whose outputs "
            "only `combiner=\"average\"` combines. "
            f"Received: combiner={combiner!r}"
        )
    if name in found[0][2].names:
        raise ValueError(
            f"`backbone` already has an adapter or combination named "
            f"{name!r}; pass another `name`. Received: name={name!r}"
        )
    make = combiner_factory(combiner, len(sources), combiner_kwargs)
    # Construct (and so validate) every combiner before touching the model.
    combiners = [make(f"{name}_combiner") for _ in found]
    for (_, _, wrapper), layer in zip(found, combiners):
        wrapper.add_combiner(name, layer, sources)
    set_active_adapter(backbone, name)
    return backbone
