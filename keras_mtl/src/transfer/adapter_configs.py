"""Adapter configurations: which adapter `add_adapters` puts where."""

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.adapter_hypernetwork import AdapterHypernetwork
from keras_mtl.src.layers.adapter_hypernetwork import TaskEmbedding
from keras_mtl.src.layers.bottleneck_adapter import BottleneckAdapter
from keras_mtl.src.layers.compacter_adapter import CompacterAdapter
from keras_mtl.src.layers.hyper_adapter import HyperAdapter
from keras_mtl.src.layers.ia3_adapter import IA3Adapter
from keras_mtl.src.layers.lora_adapter import LoRAAdapter
from keras_mtl.src.layers.lora_adapter import check_output_dims
from keras_mtl.src.layers.parallel_adapter import ParallelAdapter
from keras_mtl.src.layers.phm_rule import PHMRule
from keras_mtl.src.layers.prefix_adapter import PrefixAdapter
from keras_mtl.src.layers.prefix_generator import PrefixGenerator
from keras_mtl.src.layers.prompt_adapter import PromptAdapter
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer import prefix_attention
from keras_mtl.src.transfer import prompt_wrapper
from keras_mtl.src.transfer import tapped_delta

# Projection targets of LoRA and (IA)^3 and the encoder slots they name.
TARGETS = {
    "query": backbone_walk.QUERY,
    "key": backbone_walk.KEY,
    "value": backbone_walk.VALUE,
    "intermediate": backbone_walk.FEEDFORWARD_INPUT,
    "output": backbone_walk.FEEDFORWARD_OUTPUT,
}


def _check_names(argument, value, allowed, default):
    """A non-empty selection of distinct names among `allowed`, returned in
    `allowed`'s order (so equal selections give equal variables)."""
    value = default if value is None else value
    if isinstance(value, str):
        value = (value,)
    if (
        not isinstance(value, (list, tuple))
        or not value
        or any(v not in allowed for v in value)
        or len(set(value)) != len(value)
    ):
        raise ValueError(
            f"`{argument}` must be a non-empty list of distinct names among "
            f"{list(allowed)}. Received: {argument}={value!r}"
        )
    return tuple(v for v in allowed if v in value)


def _projection(layer):
    """The wrapped projection (the layer itself when not wrapped)."""
    return getattr(layer, "layer", layer)


def applies_activation(layer):
    """Whether a projection applies a non-linear activation to its output."""
    return getattr(layer, "activation", None) not in (
        None, keras.activations.linear)


def projection_dims(layer):
    """`(d_in, output_dims)` of a Dense or EinsumDense projection whose
    kernel contracts the input's last axis."""
    layer = _projection(layer)
    kernel = getattr(layer, "kernel", None)
    if kernel is None or len(kernel.shape) < 2:
        raise ValueError(
            f"LoRA and (IA)^3 adapt Dense or EinsumDense projections. "
            f"Received: {type(layer).__name__}(name={layer.name!r})"
        )
    d_in = int(kernel.shape[0])
    out = layer.compute_output_shape((None, None, d_in))[2:]
    return d_in, check_output_dims(tuple(int(d) for d in out))


class AdapterConfig:
    """Base class: a named recipe of adapter sites and adapters."""

    name = None

    def sites(self, encoder):
        """`[(slot, placement), ...]` wrapped in `encoder`."""
        raise NotImplementedError

    # Whether one layer serves the adapters of all tasks (a task's
    # adapters then cannot be loaded or averaged on their own).
    shared_across_tasks = False

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        """A new, unbuilt adapter for `slot` of `encoder`; `shared` is a
        dict, one per task and `add_adapters` call, for layers that all of
        a task's adapters share; its `"common"` entry is one dict for all
        tasks (with `"num_blocks"`, the number of transformer blocks)."""
        raise NotImplementedError

    def reused_layers(self, adapter):
        """Layers of an existing adapter that new tasks' adapters share
        (the `"common"` entries of `make_adapter`)."""
        return {}

    def check_sites(self, encoder):
        """Raises a `ValueError` if `encoder` cannot take these adapters."""

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return (type(self) is type(other)
                and self.get_config() == other.get_config())

    def __repr__(self):
        config = self.get_config()
        arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({arguments})"


@keras_mtl_export("keras_mtl.transfer.BottleneckConfig")
class BottleneckConfig(AdapterConfig):
    """Sequential bottleneck adapters (Pfeiffer or Houlsby placement).

    `placement="pfeiffer"` (`adapters`' `SeqBnConfig`): one adapter per
    layer after the feed-forward block (in post-LN encoders around the
    closing LayerNorm, `s -> LN(s + A(LN(s)))`; in pre-LN encoders on the
    feed-forward output). `placement="houlsby"` (`DoubleSeqBnConfig`): two,
    after the attention and after the feed-forward sub-layer. Weights per
    adapter: `2 d m + m + d`, `m = d // reduction_factor`.

    Args:
        placement: `"pfeiffer"` or `"houlsby"`. Defaults to `"pfeiffer"`.
        reduction_factor: bottleneck width `d // reduction_factor`.
            Defaults to `16`.
        activation: defaults to `None`: `"relu"` for Pfeiffer, `"swish"`
            for Houlsby.
        hidden_units: optional bottleneck width overriding
            `reduction_factor`. Defaults to `None`.

    Example:

    >>> config = keras_mtl.transfer.BottleneckConfig("houlsby")
    >>> config.get_config()["activation"]
    'swish'
    """

    def __init__(self, placement="pfeiffer", reduction_factor=16,
                 activation=None, hidden_units=None):
        if placement not in ("pfeiffer", "houlsby"):
            raise ValueError(
                "`placement` must be 'pfeiffer' or 'houlsby'. "
                f"Received: placement={placement!r}"
            )
        self.name = placement
        self.reduction_factor = reduction_factor
        self.activation = activation or (
            "relu" if placement == "pfeiffer" else "swish")
        self.hidden_units = hidden_units
        # Fails early on bad adapter arguments.
        self._adapter_kwargs()

    def _adapter_kwargs(self):
        kwargs = {
            "reduction_factor": self.reduction_factor,
            "activation": self.activation,
            "hidden_units": self.hidden_units,
            "residual": False,
        }
        BottleneckAdapter(**kwargs)
        return kwargs

    def sites(self, encoder):
        if self.name == "houlsby":
            return [("_self_attention_dropout", "output"),
                    ("_feedforward_dropout", "output")]
        if encoder.normalize_first:
            # Pre-LN blocks have no closing LayerNorm: the adapter sits on
            # the feed-forward output, before the residual addition.
            return [("_feedforward_dropout", "output")]
        return [("_feedforward_layer_norm", "post_norm")]

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        return BottleneckAdapter(**self._adapter_kwargs(), dtype=dtype,
                                 name=name)

    def get_config(self):
        return {
            "placement": self.name,
            "reduction_factor": self.reduction_factor,
            "activation": self.activation,
            "hidden_units": self.hidden_units,
        }


@keras_mtl_export("keras_mtl.transfer.LoRAConfig")
class LoRAConfig(AdapterConfig):
    """LoRA (Hu et al., 2022) beside attention (and feed-forward) projections.

    Each target projection `W` gets a `keras_mtl.layers.LoRAAdapter`, so
    that it computes `x W + (alpha / r) x A B`; `B` starts at zero, so the
    model is unchanged at initialisation. `merge_adapter` folds `A B` into
    `W`. Defaults are those of `adapters`' `LoRAConfig`: rank 8, alpha 8,
    query and value: `2 L r (d + d)` weights, 294,912 for RoBERTa-base.

    Args:
        rank: the rank `r`. Defaults to `8`.
        alpha: the scale numerator. Defaults to `None`, i.e. `rank`.
        targets: names among `"query"`, `"key"`, `"value"` (attention
            projections), `"intermediate"` and `"output"` (the feed-forward
            denses; keras-hub's intermediate dense applies its activation,
            so LoRA refuses it there). Defaults to `("query", "value")`.
        dropout: dropout rate on the input of `A`. Defaults to `0.0`.

    Example:

    >>> keras_mtl.transfer.LoRAConfig(rank=4).get_config()["targets"]
    ['query', 'value']
    """

    name = "lora"

    def __init__(self, rank=8, alpha=None, targets=None, dropout=0.0):
        self.targets = _check_names("targets", targets, TARGETS,
                                    ("query", "value"))
        layer = LoRAAdapter(rank=rank, alpha=alpha, dropout=dropout)
        self.rank, self.alpha, self.dropout = rank, layer.alpha, dropout

    def sites(self, encoder):
        return [(TARGETS[t], "parallel") for t in self.targets]

    def check_sites(self, encoder):
        for target in self.targets:
            slot = TARGETS[target]
            layer = _projection(backbone_walk.sublayer(encoder, slot))
            if applies_activation(layer):
                activation = layer.activation
                raise ValueError(
                    f"LoRA adds `x A B` to a linear projection, but the "
                    f"{target!r} projection of encoder {encoder.name!r} "
                    f"applies the activation {activation.__name__!r}. "
                    f"Received: targets={list(self.targets)!r}"
                )

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        _, out = projection_dims(backbone_walk.sublayer(encoder, slot))
        return LoRAAdapter(rank=self.rank, alpha=self.alpha,
                           output_dims=out, dropout=self.dropout,
                           dtype=dtype, name=name)

    def get_config(self):
        return {"rank": self.rank, "alpha": self.alpha,
                "targets": list(self.targets), "dropout": self.dropout}


@keras_mtl_export("keras_mtl.transfer.IA3Config")
class IA3Config(AdapterConfig):
    """(IA)^3 (Liu et al., 2022): learned rescaling of keys, values and the
    feed-forward activations.

    Each target projection's output is multiplied by a learned vector that
    starts at one (`keras_mtl.layers.IA3Adapter`); for `"intermediate"`,
    the keras-hub encoder's intermediate dense includes the activation, so
    the scaling follows it, as in the paper. Weights: `L (2 d + d_ff)`,
    55,296 for RoBERTa-base. `merge_adapter` folds the vectors into the
    projections.

    Args:
        targets: names among `"query"`, `"key"`, `"value"`,
            `"intermediate"` and `"output"`. Defaults to
            `("key", "value", "intermediate")`.

    Example:

    >>> keras_mtl.transfer.IA3Config().get_config()
    {'targets': ['key', 'value', 'intermediate']}
    """

    name = "ia3"

    def __init__(self, targets=None):
        self.targets = _check_names("targets", targets, TARGETS,
                                    ("key", "value", "intermediate"))

    def sites(self, encoder):
        return [(TARGETS[t], "output") for t in self.targets]

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        _, out = projection_dims(backbone_walk.sublayer(encoder, slot))
        return IA3Adapter(num_axes=len(out), residual=False, dtype=dtype,
                          name=name)

    def get_config(self):
        return {"targets": list(self.targets)}


# Sub-layers of the parallel adapter and the slots of their taps.
SUBLAYERS = {
    "attention": backbone_walk.QUERY,
    "feedforward": backbone_walk.FEEDFORWARD_INPUT,
}


@keras_mtl_export("keras_mtl.transfer.ParallelConfig")
class ParallelConfig(AdapterConfig):
    """Scaled parallel adapters (He et al., 2022) beside whole sub-layers.

    For a sub-layer `F` with input `x` (the feed-forward block, and/or the
    attention block), the encoder computes `F(x) + s A(x)` before the
    residual addition, `A` a `keras_mtl.layers.ParallelAdapter` (bottleneck
    `d // reduction_factor`, zero up-projection, so the model is unchanged
    at initialisation). Defaults are `adapters`' `ParBnConfig`: feed-forward
    only, reduction factor 2, ReLU, `s = 4`: `L (2 d m + m + d)` weights,
    7,091,712 for RoBERTa-base. He et al.'s attention variant adds to the
    heads before the output projection; here it is added after it (the
    same function class: the projection is linear).

    Args:
        reduction_factor: bottleneck width `d // reduction_factor`.
            Defaults to `2`.
        scaling: the fixed scale `s`. Defaults to `4.0`.
        activation: defaults to `"relu"`.
        hidden_units: optional bottleneck width overriding
            `reduction_factor`. Defaults to `None`.
        sublayers: `"feedforward"` and/or `"attention"`. Defaults to
            `("feedforward",)`.

    Example:

    >>> keras_mtl.transfer.ParallelConfig(sublayers=["attention"]).name
    'parallel'
    """

    name = "parallel"

    def __init__(self, reduction_factor=2, scaling=4.0, activation="relu",
                 hidden_units=None, sublayers=("feedforward",)):
        self.sublayers = _check_names("sublayers", sublayers, SUBLAYERS,
                                      ("feedforward",))
        self.reduction_factor = reduction_factor
        self.scaling = scaling
        self.activation = activation
        self.hidden_units = hidden_units
        self._make(None, None)  # fails early on bad adapter arguments

    def _make(self, name, dtype):
        return ParallelAdapter(
            reduction_factor=self.reduction_factor, scaling=self.scaling,
            activation=self.activation, hidden_units=self.hidden_units,
            dtype=dtype, name=name)

    def sites(self, encoder):
        return [(SUBLAYERS[s], "tap") for s in self.sublayers]

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        return self._make(name, dtype)

    def get_config(self):
        return {
            "reduction_factor": self.reduction_factor,
            "scaling": self.scaling,
            "activation": self.activation,
            "hidden_units": self.hidden_units,
            "sublayers": list(self.sublayers),
        }


@keras_mtl_export("keras_mtl.transfer.CompacterConfig")
class CompacterConfig(AdapterConfig):
    """Compacter and Compacter++ (Mahabadi et al., 2021).

    Bottleneck adapters whose projections are PHM layers
    (`keras_mtl.layers.CompacterAdapter`) with one `PHMRule` shared by all
    adapters of a task. `placement="compacter"` uses Houlsby's two positions
    per layer, `"compacter++"` the feed-forward position only (Pfeiffer's).
    Defaults are `adapters`' (`CompacterConfig`, `CompacterPlusPlusConfig`):
    reduction factor 32, GELU, `n = 4`, rank 1. RoBERTa-base: 57,088
    (Compacter) and 28,576 (Compacter++) weights per task. The adapters start
    near zero (rules `N(0, 1e-4)`), not exactly at zero.

    Args:
        placement: `"compacter"` or `"compacter++"`. Defaults to
            `"compacter++"`.
        reduction_factor: defaults to `32`.
        activation: defaults to `"gelu"`.
        phm_dim: `n`. Defaults to `4`.
        phm_rank: defaults to `1`.

    Example:

    >>> keras_mtl.transfer.CompacterConfig().name
    'compacter++'
    """

    def __init__(self, placement="compacter++", reduction_factor=32,
                 activation="gelu", phm_dim=4, phm_rank=1):
        if placement not in ("compacter", "compacter++"):
            raise ValueError(
                "`placement` must be 'compacter' or 'compacter++'. "
                f"Received: placement={placement!r}"
            )
        self.name = placement
        self.reduction_factor = reduction_factor
        self.activation = activation
        self.phm_dim = phm_dim
        self.phm_rank = phm_rank
        self._make(PHMRule(phm_dim=phm_dim), None, None)  # checks arguments

    def _make(self, rule, name, dtype):
        return CompacterAdapter(
            rule, reduction_factor=self.reduction_factor,
            activation=self.activation, phm_rank=self.phm_rank, dtype=dtype,
            name=name)

    def sites(self, encoder):
        placement = "houlsby" if self.name == "compacter" else "pfeiffer"
        return BottleneckConfig(placement).sites(encoder)

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        shared = {} if shared is None else shared
        if "rule" not in shared:
            shared["rule"] = PHMRule(phm_dim=self.phm_dim, dtype=dtype,
                                     name=f"{name}_phm_rule")
        return self._make(shared["rule"], name, dtype)

    def get_config(self):
        return {"placement": self.name,
                "reduction_factor": self.reduction_factor,
                "activation": self.activation, "phm_dim": self.phm_dim,
                "phm_rank": self.phm_rank}


@keras_mtl_export("keras_mtl.transfer.PrefixTuningConfig")
class PrefixTuningConfig(AdapterConfig):
    """Prefix tuning (Li & Liang, 2021) in every attention layer.

    Each attention layer attends over `[P_k; K]` and `[P_v; V]`, with `l`
    learned prefix positions per layer for the keys and for the values
    (`keras_mtl.layers.PrefixAdapter`); the attention mask is extended so
    that every query sees them. In training the prefixes come from one
    reparametrisation MLP per task, `W_2 tanh(E W_1 + b_1) + b_2`
    (`keras_mtl.layers.PrefixGenerator`); `keras_mtl.transfer.eject_prefix`
    then evaluates it once and keeps the `2 l L d` prefix values only.
    Defaults are `adapters`' `PrefixTuningConfig`: `l = 30`, MLP width 512,
    tanh. RoBERTa-base: 9,872,384 weights in training, 552,960 kept.
    Outputs change at initialisation (the prefixes are not zero).

    Args:
        prefix_length: `l`. Defaults to `30`.
        bottleneck_size: width of the reparametrisation MLP. Defaults to
            `512`.
        activation: the MLP's activation. Defaults to `"tanh"`.
        flat: train the prefixes directly (`N(0, 1)` initialisation), with
            no MLP. Defaults to `False`.

    Example:

    >>> keras_mtl.transfer.PrefixTuningConfig(prefix_length=10).name
    'prefix_tuning'
    """

    name = "prefix_tuning"

    def __init__(self, prefix_length=30, bottleneck_size=512,
                 activation="tanh", flat=False):
        generator = PrefixGenerator(prefix_length, bottleneck_size,
                                    activation)  # checks the arguments
        if not isinstance(flat, bool):
            raise ValueError(f"`flat` must be a bool. Received: flat={flat!r}")
        self.prefix_length = prefix_length
        self.bottleneck_size = bottleneck_size
        self.activation = keras.activations.serialize(generator.activation)
        self.flat = flat

    def sites(self, encoder):
        return [(backbone_walk.KEY, "prefix"), (backbone_walk.VALUE, "prefix")]

    def check_sites(self, encoder):
        prefix_attention.check_attention(encoder)

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        if self.flat:
            return PrefixAdapter(self.prefix_length, dtype=dtype, name=name)
        shared = {} if shared is None else shared
        if "generator" not in shared:
            # Built by the first prefix that uses it (embedding width: the
            # key projection's output width, d for keras-hub encoders).
            shared["generator"] = PrefixGenerator(
                self.prefix_length, self.bottleneck_size, self.activation,
                dtype=dtype, name=f"{name}_prefix_generator")
        return PrefixAdapter(generator=shared["generator"], dtype=dtype,
                             name=name)

    def get_config(self):
        return {"prefix_length": self.prefix_length,
                "bottleneck_size": self.bottleneck_size,
                "activation": self.activation, "flat": self.flat}


@keras_mtl_export("keras_mtl.transfer.PromptTuningConfig")
class PromptTuningConfig(AdapterConfig):
    """Prompt tuning (Lester et al., 2021): soft prompt tokens.

    Each task learns `l` vectors `P` (`l x d`, `keras_mtl.layers.
    PromptAdapter`) that enter the first transformer block before the
    embedded input: every block then runs on `[P; X]` (the input positions
    attend to the prompt positions, which in encoders attend to the whole
    input and in decoders to earlier prompt positions only), and the prompt
    positions are dropped after the last block, so the backbone's outputs
    keep their shape. `P` is in the blocks' input space (after the
    embedding layers, with no position embedding). Defaults are
    `adapters`' `PromptTuningConfig`: `l = 10`, `U(-0.5, 0.5)`:
    `l d` = 7,680 weights for RoBERTa-base. Outputs change at
    initialisation. To start a task's prompt from another's (prompt
    transfer, MVLPT), `load_adapter` the saved source prompt under the new
    task's name, or `average_adapter(backbone, new, [source])`.

    Args:
        prompt_length: `l`. Defaults to `10`.
        initializer: initializer of `P`. Defaults to `None`:
            `RandomUniform(-0.5, 0.5)`.

    Example:

    >>> keras_mtl.transfer.PromptTuningConfig(prompt_length=16).name
    'prompt_tuning'
    """

    name = "prompt_tuning"

    def __init__(self, prompt_length=10, initializer=None):
        layer = PromptAdapter(prompt_length, initializer=initializer)
        self.prompt_length = prompt_length
        self.initializer = keras.initializers.serialize(layer.initializer)

    def sites(self, encoder):
        return [(backbone_walk.ATTENTION, "prompt")]

    def check_sites(self, encoder):
        prompt_wrapper.check_block(encoder)

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        # The task's first adapter (first block) holds the prompt.
        shared = {} if shared is None else shared
        start = "start" not in shared
        shared["start"] = True
        return PromptAdapter(self.prompt_length, start=start,
                             initializer=self.initializer, dtype=dtype,
                             name=name)

    def get_config(self):
        return {"prompt_length": self.prompt_length,
                "initializer": self.initializer}


@keras_mtl_export("keras_mtl.transfer.HyperConfig")
class HyperConfig(AdapterConfig):
    """Hyperformer++ adapters (Mahabadi et al., 2021), generated per task
    and layer.

    Every task gets adapters after the attention and the feed-forward
    sub-layers (Houlsby's positions, as Hyperformer on T5), whose weights
    one `keras_mtl.layers.AdapterHypernetwork`, shared by all tasks, layers
    and positions, generates from the task's `TaskEmbedding` and learned
    layer and position embeddings (`keras_mtl.layers.HyperAdapter`). Tasks
    added later share the same hypernetwork; a new task adds
    `embedding_dim` weights. Train the tasks jointly, e.g. with
    `Parallel` and one head per task in a `keras_mtl.MultiTaskModel`.
    Defaults are Hyperformer's: reduction factor 32, embeddings 64,
    projector 128, GELU. RoBERTa-base: 2,581,464 weights for the
    hypernetwork plus 64 per task. The adapters start exactly at zero:
    the LayerNorm scale and shift generators start at zero (Hyperformer
    draws every generator from `N(0, 0.01)`; see
    `keras_mtl.layers.AdapterHypernetwork`).

    Args:
        reduction_factor: defaults to `32`.
        embedding_dim: task, layer and position embedding size. Defaults to
            `64`.
        projection_dim: the projector's hidden size. Defaults to `128`.
        activation: the adapters' activation. Defaults to `"gelu"`.

    Example:

    >>> keras_mtl.transfer.HyperConfig().name
    'hyper'
    """

    name = "hyper"
    shared_across_tasks = True

    def __init__(self, reduction_factor=32, embedding_dim=64,
                 projection_dim=128, activation="gelu"):
        AdapterHypernetwork(1, 2, reduction_factor, embedding_dim,
                            projection_dim)  # checks the arguments
        TaskEmbedding(embedding_dim)
        self.reduction_factor = reduction_factor
        self.embedding_dim = embedding_dim
        self.projection_dim = projection_dim
        self.activation = keras.activations.serialize(
            keras.activations.get(activation))

    def sites(self, encoder):
        return BottleneckConfig("houlsby").sites(encoder)

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        shared = {} if shared is None else shared
        common = shared.setdefault("common", {"num_blocks": 1})
        if "hypernetwork" not in common:
            common["hypernetwork"] = AdapterHypernetwork(
                common["num_blocks"], 2, self.reduction_factor,
                self.embedding_dim, self.projection_dim, dtype=dtype,
                name="adapter_hypernetwork")
        if "task_embedding" not in shared:
            shared["task_embedding"] = TaskEmbedding(
                self.embedding_dim, dtype=dtype, name=f"{name}_embedding")
        # Sites come block by block, two per block.
        count = shared.get("count", 0)
        shared["count"] = count + 1
        return HyperAdapter(common["hypernetwork"], shared["task_embedding"],
                            count // 2, count % 2, self.activation,
                            dtype=dtype, name=name)

    def reused_layers(self, adapter):
        if isinstance(adapter, HyperAdapter):
            return {"hypernetwork": adapter.hypernetwork}
        return {}

    def get_config(self):
        return {"reduction_factor": self.reduction_factor,
                "embedding_dim": self.embedding_dim,
                "projection_dim": self.projection_dim,
                "activation": self.activation}


def _claims(config, encoder):
    """The slots `config` changes in `encoder`: its sites and the layers
    that its taps and prefixes need elsewhere in the block."""
    claimed = []
    for slot, placement in config.sites(encoder):
        claimed.append(slot)
        if placement == "tap":
            claimed.append(tapped_delta.OUTPUTS[slot])
        if placement == "prefix":
            claimed.append(backbone_walk.ATTENTION)
    return claimed


@keras_mtl_export("keras_mtl.transfer.ConfigUnion")
class ConfigUnion(AdapterConfig):
    """Several adapter configs at once (`adapters`' `ConfigUnion`).

    Every task gets the adapters of each part; one `set_active_adapter`
    switches them together, and they train, save, load and round-trip
    together. Parts must be of different kinds and must not touch the
    same sub-layer (e.g. LoRA on the value projection and prefix tuning,
    which extends the values, are refused together). The name joins the
    parts' names in alphabetical order.

    Args:
        *configs: two or more config objects (`BottleneckConfig`,
            `LoRAConfig`, `IA3Config`, `ParallelConfig`, `CompacterConfig`,
            `PrefixTuningConfig`, `PromptTuningConfig`) or their string
            names.

    Example:

    >>> union = keras_mtl.transfer.ConfigUnion("lora", "parallel")
    >>> union.name
    'lora+parallel'
    """

    def __init__(self, *configs):
        parts = [resolve_config(c) for c in configs]
        if len(parts) < 2 or any(isinstance(p, ConfigUnion) for p in parts):
            raise ValueError(
                "`ConfigUnion` takes two or more configs, none of them a "
                f"union. Received: configs={configs!r}")
        kinds = [_kind_of(p) for p in parts]
        if len(set(kinds)) != len(kinds):
            raise ValueError(
                "The parts of a `ConfigUnion` must be of different kinds. "
                f"Received: configs={configs!r}")
        self.configs = tuple(sorted(parts, key=lambda p: p.name))
        self.name = "+".join(p.name for p in self.configs)

    def sites(self, encoder):
        return [site for part in self.configs for site in part.sites(encoder)]

    def check_sites(self, encoder):
        owners = {}
        for part in self.configs:
            part.check_sites(encoder)
            for slot in _claims(part, encoder):
                if owners.get(slot, part) is not part:
                    raise ValueError(
                        f"{owners[slot].name!r} and {part.name!r} both change "
                        f"{slot} of encoder {encoder.name!r}; a union's parts "
                        f"must touch different sub-layers. Received: "
                        f"{self!r}")
                owners[slot] = part

    def make_adapter(self, encoder, slot, name, dtype, shared=None):
        shared = {} if shared is None else shared
        for index, part in enumerate(self.configs):
            if any(s == slot for s, _ in part.sites(encoder)):
                own = shared.setdefault(
                    index, {"common": shared.setdefault("common", {})})
                return part.make_adapter(encoder, slot, name, dtype, own)
        raise ValueError(f"No part of {self!r} adapts {slot}.")

    def reused_layers(self, adapter):
        reused = {}
        for part in self.configs:
            reused.update(part.reused_layers(adapter))
        return reused

    def get_config(self):
        return {"configs": [serialize_config(c) for c in self.configs]}

    @classmethod
    def from_config(cls, config):
        return cls(*[deserialize_config(c) for c in config["configs"]])

    def __eq__(self, other):
        return (isinstance(other, ConfigUnion)
                and self.configs == other.configs)

    def __repr__(self):
        return f"ConfigUnion({', '.join(repr(c) for c in self.configs)})"


@keras_mtl_export("keras_mtl.transfer.MAMConfig")
class MAMConfig(ConfigUnion):
    """The Mix-And-Match adapter of He et al. (2022).

    Prefix tuning at the attention layers plus a scaled parallel adapter
    beside the feed-forward block: `ConfigUnion(PrefixTuningConfig(l,
    bottleneck_size), ParallelConfig(reduction_factor, scaling))`. Defaults
    are `adapters`' `MAMConfig` (`l = 30`, prefix MLP 800, reduction factor
    2, `s = 4`): 7,644,672 weights kept for RoBERTa-base. He et al.'s GLUE
    script uses `prefix_length=16, reduction_factor=48, scaling=2.0`.

    Args:
        prefix_length: defaults to `30`.
        bottleneck_size: the prefix MLP's width. Defaults to `800`.
        reduction_factor: of the parallel adapter. Defaults to `2`.
        scaling: of the parallel adapter. Defaults to `4.0`.

    Example:

    >>> keras_mtl.transfer.MAMConfig().name
    'parallel+prefix_tuning'
    """

    def __init__(self, prefix_length=30, bottleneck_size=800,
                 reduction_factor=2, scaling=4.0):
        super().__init__(
            PrefixTuningConfig(prefix_length, bottleneck_size),
            ParallelConfig(reduction_factor, scaling))
        self.arguments = {"prefix_length": prefix_length,
                          "bottleneck_size": bottleneck_size,
                          "reduction_factor": reduction_factor,
                          "scaling": scaling}

    def get_config(self):
        return dict(self.arguments)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return AdapterConfig.__repr__(self)


def _kind_of(config):
    """The adapter class family a (non-union) config makes."""
    return type(config).__name__


CONFIGS = {
    "pfeiffer": lambda: BottleneckConfig("pfeiffer"),
    "houlsby": lambda: BottleneckConfig("houlsby"),
    "lora": LoRAConfig,
    "ia3": IA3Config,
    "parallel": ParallelConfig,
    "compacter": lambda: CompacterConfig("compacter"),
    "compacter++": CompacterConfig,
    "prefix_tuning": PrefixTuningConfig,
    "mam": MAMConfig,
    "prompt_tuning": PromptTuningConfig,
    "hyper": HyperConfig,
}


def resolve_config(config, reduction_factor=None, activation=None,
                   hidden_units=None):
    """The `AdapterConfig` for `add_adapters`' `config` argument."""
    bottleneck_arguments = {
        "reduction_factor": reduction_factor,
        "activation": activation,
        "hidden_units": hidden_units,
    }
    given = {k: v for k, v in bottleneck_arguments.items() if v is not None}
    if isinstance(config, str) and config in ("pfeiffer", "houlsby"):
        return BottleneckConfig(config, **{"reduction_factor": 16, **given})
    if given:
        raise ValueError(
            f"{sorted(given)} apply to the 'pfeiffer' and 'houlsby' configs "
            f"only. Received: config={config!r}"
        )
    if isinstance(config, AdapterConfig):
        return config
    if isinstance(config, str) and config in CONFIGS:
        return CONFIGS[config]()
    raise ValueError(
        f"`config` must be one of {sorted(CONFIGS)} or an adapter config "
        "object (BottleneckConfig, LoRAConfig, IA3Config, ParallelConfig, "
        "CompacterConfig, PrefixTuningConfig, PromptTuningConfig, "
        "HyperConfig, ConfigUnion, MAMConfig). "
        f"Received: config={config!r}"
    )


def serialize_config(config):
    return {"class_name": type(config).__name__,
            "config": config.get_config()}


def deserialize_config(item):
    classes = {c.__name__: c for c in (BottleneckConfig, LoRAConfig,
                                       IA3Config, ParallelConfig,
                                       CompacterConfig, PrefixTuningConfig,
                                       PromptTuningConfig, HyperConfig,
                                       ConfigUnion, MAMConfig)}
    if (
        not isinstance(item, dict)
        or item.get("class_name") not in classes
        or not isinstance(item.get("config"), dict)
    ):
        raise ValueError(f"Not a serialised adapter config: {item!r}")
    return classes[item["class_name"]].from_config(item["config"])
