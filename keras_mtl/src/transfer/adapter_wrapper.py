"""`AdapterWrapper`: per-task adapters around a sub-layer of a block."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.transfer import composition
from keras_mtl.src.utils.layer_internals import unlocked

PLACEMENTS = ("post_norm", "output", "parallel", "tap", "prefix")


def check_name(name, what):
    """Returns `name` if it is a usable task or combination name."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(
            f"Each {what} must be a non-empty string without '/'. "
            f"Received: {what}={name!r}"
        )
    return name


class _Registry:
    """A plain container that Keras' attribute tracking leaves alone."""

    def __init__(self):
        self.non_trainable_ids = set()


class Stash:
    """Carries a `"tap"` wrapper's delta to the layer that adds it, within
    one call of the block (a plain object: Keras does not track it)."""

    delta = None


@keras_mtl_export("keras_mtl.transfer.AdapterWrapper")
class AdapterWrapper(keras.layers.Layer):
    """Wraps a sub-layer of a transformer block with per-task adapters.

    The wrapper holds one adapter per task and, optionally, named
    combinations of several task adapters (ScaLearn, AdapterFusion, ...).
    Exactly one of them is *active* (or none, in which case the wrapper
    returns the wrapped layer's output unchanged). Adapters and combiners
    return deltas, without residual; the wrapper adds the residual:

    - `placement="post_norm"` wraps the LayerNorm that closes a post-LN
      sub-layer and computes `s -> LN(s + delta(LN(s)))` with the same
      (pre-trained) LayerNorm twice: the Pfeiffer adapter of
      Pfeiffer et al. (2021), as in `adapters`' `SeqBnConfig`
      (`original_ln_before=True, original_ln_after=True,
      residual_before_ln=True`).
    - `placement="output"` wraps a sub-layer's output (e.g. its dropout)
      and computes `d -> d + delta(d)`: the Houlsby et al. (2019)
      placement, and (IA)^3's rescaling of a projection's output.
    - `placement="parallel"` computes `x -> layer(x) + delta(x)` from the
      wrapped layer's input: LoRA beside a projection.
    - `placement="tap"` returns `layer(x)` unchanged and leaves `delta(x)`
      in `stash` for a later layer of the block to add: the parallel
      adapter, which reads a sub-layer's input (the input of its first
      projection) and adds to the sub-layer's output.
    - `placement="prefix"` prepends the adapter's output to the wrapped
      projection's along the sequence axis, `d -> [P(d); d]`: prefix
      tuning's keys and values (the attention mask is extended by
      `add_adapters`). Combinations are refused here.

    Here `delta(h)` is `A_t(h)` for an active task `t`, or
    `combiner([A_i(h) for i in sources], query=h)` for an active
    combination. `keras_mtl.transfer.add_adapters` inserts these wrappers
    into keras-hub `TransformerEncoder`s; use the wrapper directly only
    for your own blocks.

    Args:
        layer: the wrapped layer (a `LayerNormalization` for
            `placement="post_norm"`).
        placement: `"post_norm"`, `"output"`, `"parallel"`, `"tap"` or
            `"prefix"`, see above. Defaults to `"post_norm"`.
        adapters: dict mapping task names to adapter layers that return
            the adapter's delta (e.g.
            `keras_mtl.layers.BottleneckAdapter(residual=False)`).
        combiners: dict mapping combination names to combiner layers,
            called as `combiner(list_of_deltas, query=h, training=...)`.
        combiner_sources: dict mapping each combination name to the list
            of task names whose adapters it combines.
        active: the task or combination used in `call`, or `None` for
            none. Defaults to `None`.
        **kwargs: base `Layer` keyword arguments.

    Call arguments:
        inputs: the wrapped layer's input, shape `(..., hidden_dim)`.
        training: Python boolean, passed to the adapters and combiners.

    Example:

    >>> adapter = keras_mtl.layers.BottleneckAdapter(
    ...     reduction_factor=4, residual=False)
    >>> wrapper = keras_mtl.transfer.AdapterWrapper(
    ...     keras.layers.LayerNormalization(),
    ...     adapters={"sst2": adapter}, active="sst2")
    >>> y = wrapper(np.ones((2, 5, 8), "float32"))
    >>> tuple(y.shape)
    (2, 5, 8)

    Reference:
        - [Pfeiffer et al., 2021](https://arxiv.org/abs/2005.00247)
        - [Houlsby et al., 2019](https://arxiv.org/abs/1902.00751)
    """

    placements = PLACEMENTS

    def __init__(
        self,
        layer,
        placement="post_norm",
        adapters=None,
        combiners=None,
        combiner_sources=None,
        active=None,
        **kwargs,
    ):
        if "dtype" not in kwargs and hasattr(layer, "dtype_policy"):
            kwargs["dtype"] = layer.dtype_policy
        super().__init__(**kwargs)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "`layer` must be a Keras layer. "
                f"Received: layer={layer!r}"
            )
        if placement not in self.placements:
            raise ValueError(
                f"`placement` must be one of {self.placements}. "
                f"Received: placement={placement!r}"
            )
        self.layer = layer
        self.placement = placement
        # Variables that adapters or combiners create as non-trainable (e.g.
        # an annealed temperature); `set_active_adapter` keeps them frozen.
        self._registry = _Registry()
        self.stash = Stash()
        self.adapters = {}
        self.combiners = {}
        self.combiner_sources = {}
        self.active = None
        for name, adapter in (adapters or {}).items():
            self.add_adapter(name, adapter)
        combiner_sources = combiner_sources or {}
        for name, combiner in (combiners or {}).items():
            if name not in combiner_sources:
                raise ValueError(
                    f"`combiner_sources` has no entry for combination "
                    f"{name!r}. Received: combiner_sources="
                    f"{combiner_sources!r}"
                )
            self.add_combiner(name, combiner, combiner_sources[name])
        self.set_active(active)

    def _remember_non_trainable(self, layer):
        for variable in layer.weights:
            if not variable.trainable:
                self._registry.non_trainable_ids.add(id(variable))

    @property
    def non_trainable_ids(self):
        """`id`s of the variables its layers created non-trainable (they
        never become trainable when an adapter is activated)."""
        return set(self._registry.non_trainable_ids)

    @property
    def names(self):
        """Task and combination names, in insertion order."""
        return list(self.adapters) + list(self.combiners)

    def add_adapter(self, name, adapter):
        """Adds `adapter` for task `name` (built if the wrapper is)."""
        check_name(name, "task name")
        if name in self.adapters or name in self.combiners:
            raise ValueError(
                f"This wrapper already has an adapter or combination "
                f"named {name!r}. Received: name={name!r}"
            )
        if self.built and not adapter.built:
            adapter.build(self._adapter_shape)
        if adapter.built:
            self._remember_non_trainable(adapter)
        with unlocked(self):
            self.adapters[name] = adapter

    def add_combiner(self, name, combiner, sources):
        """Adds a combination `name` of the adapters of `sources`."""
        check_name(name, "combination name")
        if self.placement == "prefix":
            raise ValueError(
                "Prefixes are concatenated, not combined: a `\"prefix\"` "
                f"wrapper takes no combinations. Received: name={name!r}"
            )
        if name in self.adapters or name in self.combiners:
            raise ValueError(
                f"This wrapper already has an adapter or combination "
                f"named {name!r}. Received: name={name!r}"
            )
        sources = list(sources)
        unknown = [s for s in sources if s not in self.adapters]
        if unknown or not sources:
            raise ValueError(
                f"Combination {name!r} needs a non-empty list of task "
                f"names among {list(self.adapters)}. "
                f"Received: sources={sources!r}"
            )
        if self.built and not combiner.built:
            shape = self._delta_shape
            combiner.build([shape] * len(sources))
        if combiner.built:
            self._remember_non_trainable(combiner)
        with unlocked(self):
            self.combiners[name] = combiner
            self.combiner_sources[name] = sources

    def replace_adapter(self, name, adapter):
        """Puts `adapter` in place of task `name`'s adapter (built if the
        wrapper is); the old adapter stops being tracked. The task moves
        to the end of `adapters`, as the new layer does in the wrapper's
        tracked layers (whose order fixes the saved variables' order)."""
        if name not in self.adapters:
            raise ValueError(
                f"Unknown task. Available: {list(self.adapters)}. "
                f"Received: name={name!r}"
            )
        if self.built and not adapter.built:
            adapter.build(self._adapter_shape)
        with unlocked(self):
            self.adapters.pop(name)
            self.adapters[name] = adapter
        self._remember_non_trainable(adapter)

    @property
    def prefix_length(self):
        """The number of prefix positions the active setting prepends
        (`"prefix"` wrappers; 0 for the others and when none is active)."""
        if self.placement != "prefix":
            return 0
        lengths = {n: a.prefix_length for n, a in self.adapters.items()}
        return composition.prefix_length(self.active, lengths)

    def set_active(self, name):
        """Makes task or combination `name`, a composition of them
        (`keras_mtl.transfer.Stack`, `BatchSplit`, `Parallel`) or `None`
        the active one."""
        self.check_active(name)
        self.active = name

    def check_active(self, name):
        """Raises a `ValueError` unless `set_active(name)` would succeed."""
        if name is not None and not isinstance(
                name, (str, composition.Composition)):
            raise ValueError(
                "The active adapter must be a name, a composition or None. "
                f"Received: name={name!r}")
        unknown = [n for n in composition.leaves(name) if n not in self.names]
        if unknown:
            raise ValueError(
                f"Unknown task or combination. Available: {self.names}. "
                f"Received: name={name!r}"
            )

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        # Batch and sequence axes left free; feature axes kept.
        inputs = (None,) * (len(input_shape) - 1) + (input_shape[-1],)
        outputs = self.layer.compute_output_shape(input_shape)
        features = 1 if len(outputs) == len(input_shape) else (
            len(outputs) - len(input_shape) + 1)
        outputs = (None,) * (len(outputs) - features) + tuple(
            outputs[-features:])
        # Adapters read the wrapper's input or the wrapped layer's output;
        # their deltas (and so the combiners' inputs) have the shape of what
        # they are added to.
        reads_input = self.placement in ("parallel", "tap")
        self._adapter_shape = inputs if reads_input else outputs
        self._delta_shape = inputs if self.placement == "tap" else outputs
        for adapter in self.adapters.values():
            if not adapter.built:
                adapter.build(self._adapter_shape)
                self._remember_non_trainable(adapter)
        for name, combiner in self.combiners.items():
            if not combiner.built:
                num = len(self.combiner_sources[name])
                combiner.build([self._delta_shape] * num)
                self._remember_non_trainable(combiner)

    def _unit(self, name, h, training):
        """The delta of one task adapter or combination."""
        if name in self.adapters:
            return self.adapters[name](h, training=training)
        outputs = [
            self.adapters[source](h, training=training)
            for source in self.combiner_sources[name]
        ]
        return self.combiners[name](outputs, query=h, training=training)

    def _delta(self, h, training):
        mode = {"prefix": "concatenate", "parallel": "additive",
                "tap": "additive"}.get(self.placement, "sequential")
        return composition.compose(
            self.active, h, lambda name, x: self._unit(name, x, training),
            mode)

    def call(self, inputs, training=None):
        if self.placement == "post_norm":
            h = self.layer(inputs, training=training)
            if self.active is None:
                return h
            delta = self._delta(h, training)
            return self.layer(inputs + delta, training=training)
        d = self.layer(inputs, training=training)
        if self.placement == "tap":
            self.stash.delta = (
                None if self.active is None
                else self._delta(inputs, training))
            return d
        if self.active is None:
            return d
        if self.placement == "prefix":
            return ops.concatenate([self._delta(d, training), d], axis=1)
        if self.placement == "parallel":
            return d + self._delta(inputs, training)
        return d + self._delta(d, training)

    def compute_output_shape(self, input_shape):
        shape = self.layer.compute_output_shape(input_shape)
        length = self.prefix_length if self.placement == "prefix" else 0
        if length and shape[1] is not None:
            shape = (shape[0], shape[1] + length) + tuple(shape[2:])
        return shape

    def save_own_variables(self, store):
        # The wrapped layer's variables are also written at the wrapper's
        # own path, where the unwrapped model keeps them: a model saved with
        # adapters then loads into the same model without adapters (e.g.
        # rebuilt from its config by `keras.saving.load_model`).
        self.layer.save_own_variables(store)

    def load_own_variables(self, store):
        if len(store.keys()):
            self.layer.load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "layer": serialize(self.layer),
                "placement": self.placement,
                "adapters": {
                    name: serialize(adapter)
                    for name, adapter in self.adapters.items()
                },
                "combiners": {
                    name: serialize(combiner)
                    for name, combiner in self.combiners.items()
                },
                "combiner_sources": {
                    name: list(sources)
                    for name, sources in self.combiner_sources.items()
                },
                "active": composition.serialize(self.active),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object

        def load(item):
            return deserialize(item, custom_objects=custom_objects)

        config["layer"] = load(config["layer"])
        config["adapters"] = {
            name: load(item) for name, item in config["adapters"].items()
        }
        config["combiners"] = {
            name: load(item) for name, item in config["combiners"].items()
        }
        config["active"] = composition.deserialize(config.get("active"))
        return cls(**config)
