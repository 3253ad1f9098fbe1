"""`describe_transfer` / `restore_transfer`: adapters through model configs.

Adapters and adapter experts are injected into built encoder layers, whose
configs (and so the model's) know nothing of them. `describe_transfer`
records the injections in plain Python types; `restore_transfer` replays
them on the model rebuilt from its config, before its weights are loaded.
"""

import json

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.add_adapter_experts import find_adapter_experts
from keras_mtl.src.layers.add_adapter_experts import insert_adapter_experts
from keras_mtl.src.layers.add_adapter_experts import remove_adapter_experts
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer import companion_layers
from keras_mtl.src.transfer import composition
from keras_mtl.src.transfer.adapter_wrapper import AdapterWrapper
from keras_mtl.src.transfer.layer_paths import children
from keras_mtl.src.transfer.layer_paths import variable_keys
from keras_mtl.src.transfer.layer_paths import walk
from keras_mtl.src.transfer.prompt_wrapper import link_prompts
from keras_mtl.src.transfer.prompt_wrapper import wrapper_class
from keras_mtl.src.utils.layer_internals import sublayers

FORMAT = "keras_mtl.transfer_layout"
VERSION = 1
# The name of an adapter-expert injection in an encoder's "order".
EXPERTS = "adapter_experts"
# `AdapterWrapper.get_config` entries that are not base `Layer` arguments.
WRAPPER_ARGUMENTS = (
    "layer",
    "placement",
    "adapters",
    "combiners",
    "combiner_sources",
    "active",
)


def _is_encoder(layer):
    return backbone_walk.has_feedforward(layer)


def _encoders(model):
    """`(path, layer)` of the transformer encoder layers, in walk order."""
    return [(path, layer) for path, layer in walk(model) if _is_encoder(layer)]


def _units(wrapper):
    """`(kind, name, layer)` of a wrapper's adapters and combiners, in the
    order the wrapper tracks them (the order they were added)."""
    named = {}
    for kind, units in (
        ("adapter", wrapper.adapters),
        ("combiner", wrapper.combiners),
    ):
        for name, layer in units.items():
            named.setdefault(id(layer), []).append((kind, name, layer))
    ordered = []
    for child in children(wrapper):
        ordered.extend(named.pop(id(child), []))
    for rest in named.values():
        ordered.extend(rest)
    return ordered


def _injection_order(encoder, positions, experts):
    """Positions (and `EXPERTS`) in the order they were injected."""
    owners = {id(backbone_walk.sublayer(encoder, p)): p for p in positions}
    if experts is not None:
        for slot in (backbone_walk.FEEDFORWARD_INPUT,
                     backbone_walk.FEEDFORWARD_OUTPUT):
            owners[id(backbone_walk.sublayer(encoder, slot))] = EXPERTS
    order = []

    def visit(layer):
        # Depth first, children in tracking order: wrappers inside the
        # attention layer come in the order they were added to it, which
        # fixes the order of its variables.
        for child in children(layer):
            name = owners.get(id(child))
            if name is None:
                visit(child)
            elif name not in order:
                order.append(name)

    visit(encoder)
    return order


def _shared_layers(units):
    """Layers used by several adapters or combiners (e.g. the scales of the
    "++" ScaLearn variants), with the addresses of their users."""
    users = {}
    for address, unit in units:
        for layer in sublayers(unit, include_self=True):
            entry = users.setdefault(id(layer), (layer, []))
            if address not in entry[1]:
                entry[1].append(address)
    return [
        {
            "class_name": type(layer).__name__,
            "name": layer.name,
            "users": [list(address) for address in addresses],
        }
        for layer, addresses in users.values()
        if len(addresses) > 1
    ]


@keras_mtl_export("keras_mtl.transfer.describe_transfer")
def describe_transfer(model):
    """Describes the adapters injected into a model's encoders.

    `add_adapters`, `add_combiner` and `keras_mtl.layers.add_adapter_experts`
    change built encoder layers in place, which their configs do not record.
    This function records, in plain Python types (JSON-serialisable and
    backend independent), what `restore_transfer` needs to re-create them in
    the model rebuilt from its config:

    - `"encoders"`: one entry per transformer encoder layer (its `"path"`,
      the layer names from `model` down to it, and its `"index"`), with its
      `AdapterWrapper`s by position (their serialised configs, which hold
      the adapters, combiners and active adapter, and the order the units
      were added), its adapter experts (serialised) and the order of the
      injections;
    - `"shared"`: layers shared by several adapters or combiners;
    - `"trainable"`: the `trainable` flag of every variable of the model's
      layers (the backbone that `add_adapters` froze included), keyed by the
      path of the layer holding the variable and the variable's name, in
      `model.weights` order.

    A `keras_mtl.MultiTaskModel` stores this layout in its config, so that a
    model with adapters round-trips through `model.save("m.keras")` and
    `keras.saving.load_model`.

    Args:
        model: a Keras model or layer.

    Returns:
        The layout, a dict; or `None` if no encoder of `model` has adapters
        or adapter experts.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> keras_mtl.transfer.describe_transfer(backbone) is None
    True
    >>> _ = keras_mtl.transfer.add_adapters(
    ...     backbone, ["sst2", "mnli"], reduction_factor=4)
    >>> layout = keras_mtl.transfer.describe_transfer(backbone)
    >>> [e["path"] for e in layout["encoders"]]
    ['transformer_layer_0', 'transformer_layer_1']
    >>> sorted(layout["encoders"][0]["wrappers"])
    ['_feedforward_layer_norm']
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            f"`model` must be a Keras model or layer. Received: model={model!r}"
        )
    entries = []
    units = []
    injected = False
    for index, (path, encoder) in enumerate(_encoders(model)):
        wrappers = {}
        for position in backbone_walk.POSITIONS:
            wrapper = backbone_walk.sublayer(encoder, position)
            if not isinstance(wrapper, AdapterWrapper):
                continue
            ordered = _units(wrapper)
            wrappers[position] = {
                "config": keras.saving.serialize_keras_object(wrapper),
                "units": [[kind, name] for kind, name, _ in ordered],
            }
            units += [
                ((index, position, kind, name), layer)
                for kind, name, layer in ordered
            ]
        experts = find_adapter_experts(encoder)
        injected = injected or bool(wrappers) or experts is not None
        entries.append(
            {
                "path": path,
                "index": index,
                "class_name": type(encoder).__name__,
                "wrappers": wrappers,
                "adapter_experts": None
                if experts is None
                else keras.saving.serialize_keras_object(experts),
                "order": _injection_order(encoder, wrappers, experts),
            }
        )
    if not injected:
        return None
    layout = {
        "format": FORMAT,
        "version": VERSION,
        "encoders": entries,
        "shared": _shared_layers(units),
        "trainable": {
            key: bool(variable.trainable)
            for key, variable in variable_keys(model)
        },
    }
    # Plain JSON types (lists, not tuples): the layout reads back equal.
    return json.loads(json.dumps(layout))


def _mismatch(message):
    return ValueError(
        "The transfer layout does not match the model (was it described "
        f"from another model?): {message}"
    )


def _check_layout(layout):
    if not isinstance(layout, dict) or layout.get("format") != FORMAT:
        raise ValueError(
            "`layout` must be a dict returned by `describe_transfer`. "
            f"Received: layout={layout!r}"
        )
    if layout.get("version") != VERSION:
        raise ValueError(
            f"Unsupported transfer layout version {layout.get('version')!r} "
            f"(this version of keras_mtl reads version {VERSION})."
        )
    for key, kind in (
        ("encoders", list),
        ("shared", list),
        ("trainable", dict),
    ):
        if not isinstance(layout.get(key), kind):
            raise ValueError(
                f"`layout[{key!r}]` must be a {kind.__name__}. "
                f"Received: {layout.get(key)!r}"
            )


def _matches(config, entry):
    return (
        isinstance(config, dict)
        and config.get("class_name") == entry["class_name"]
        and isinstance(config.get("config"), dict)
        and config["config"].get("name") == entry["name"]
    )


def _find(config, entry):
    """The serialised config of the shared layer `entry` inside `config`."""
    if _matches(config, entry):
        return config
    values = config.values() if isinstance(config, dict) else config
    if isinstance(config, (dict, list, tuple)):
        for value in values:
            found = _find(value, entry)
            if found is not None:
                return found
    return None


def _substitute(config, entry, layer):
    """`config` with the shared layer's configs replaced by `layer`."""
    if _matches(config, entry):
        return layer
    if isinstance(config, dict):
        return {k: _substitute(v, entry, layer) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [_substitute(v, entry, layer) for v in config]
    return config


class _SharedLayers:
    """Deserialises adapters and combiners, sharing the recorded layers."""

    def __init__(self, entries):
        self.entries = entries
        self.layers = {}
        self.build_configs = {}
        self.by_user = {}
        for k, entry in enumerate(entries):
            for address in entry["users"]:
                self.by_user.setdefault(tuple(address), []).append(k)

    def deserialize(self, config, address):
        for k in self.by_user.get(address, []):
            entry = self.entries[k]
            if k not in self.layers:
                nested = _find(config, entry)
                if nested is None:
                    raise _mismatch(
                        f"no config of the shared layer {entry['name']!r} "
                        f"in {address}."
                    )
                # Built by its first user, as when it was made, so that its
                # variables get the same paths.
                nested = {
                    key: value
                    for key, value in nested.items()
                    if key != "build_config"
                }
                self.layers[k] = keras.saving.deserialize_keras_object(nested)
                self.build_configs[k] = _find(config, entry).get("build_config")
            config = _substitute(config, entry, self.layers[k])
        if isinstance(config, keras.layers.Layer):
            return config
        return keras.saving.deserialize_keras_object(config)

    def build_unbuilt(self):
        """Builds the shared layers that no user has built."""
        for k, layer in self.layers.items():
            build = self.build_configs.get(k)
            if not layer.built and build:
                layer.build_from_config(build)


def _make_wrapper(index, encoder, position, item, shared):
    """A built `AdapterWrapper` around `encoder`'s sub-layer (not yet set)."""
    inner = backbone_walk.sublayer(encoder, position)
    serialized = item["config"]
    config = dict(serialized["config"])
    saved = config.get("layer") or {}
    if (
        not isinstance(inner, keras.layers.Layer)
        or isinstance(inner, AdapterWrapper)
        or saved.get("class_name") != type(inner).__name__
        or (saved.get("config") or {}).get("name") != inner.name
    ):
        raise _mismatch(
            f"encoder {index} ({encoder.name!r}) has "
            f"{position}={inner!r}, the layout wraps a "
            f"{saved.get('class_name')!r} named "
            f"{(saved.get('config') or {}).get('name')!r}."
        )
    arguments = {key: config.pop(key) for key in WRAPPER_ARGUMENTS}
    units = [tuple(unit) for unit in item["units"]]
    expected = [("adapter", n) for n in arguments["adapters"]] + [
        ("combiner", n) for n in arguments["combiners"]
    ]
    if sorted(units) != sorted(expected):
        raise _mismatch(
            f"the units {units} of encoder {index}, {position} are not its "
            f"adapters and combiners {expected}."
        )
    placement = arguments["placement"]
    wrapper = wrapper_class(placement)(inner, placement=placement, **config)
    build = serialized.get("build_config") or {}
    shape = build.get("input_shape") or (
        None,
        None,
        backbone_walk.hidden_dim(encoder),
    )
    wrapper.build(tuple(shape))
    for kind, name in units:
        address = (index, position, kind, name)
        if kind == "adapter":
            wrapper.add_adapter(
                name, shared.deserialize(arguments["adapters"][name], address)
            )
        else:
            wrapper.add_combiner(
                name,
                shared.deserialize(arguments["combiners"][name], address),
                arguments["combiner_sources"][name],
            )
    wrapper.set_active(composition.deserialize(arguments["active"]))
    return wrapper


def _make_experts(index, encoder, config):
    experts = keras.saving.deserialize_keras_object(config)
    if not experts.built:
        experts.build((None, backbone_walk.hidden_dim(encoder)))
    return experts


def _prepare(layout, encoders):
    """The layers to inject, built, per encoder: `[(encoder, [(item,
    layer), ...]), ...]`. Leaves the model untouched."""
    shared = _SharedLayers(layout["shared"])
    plan = []
    for index, (entry, (path, encoder)) in enumerate(
        zip(layout["encoders"], encoders)
    ):
        steps = []
        wrappers = entry["wrappers"]
        expected = sorted(wrappers) + (
            [EXPERTS] if entry["adapter_experts"] is not None else []
        )
        if sorted(entry["order"]) != sorted(expected):
            raise _mismatch(
                f"encoder {index} ({path!r}) lists the injections "
                f"{entry['order']} for {expected}."
            )
        for item in entry["order"]:
            if item == EXPERTS:
                layer = _make_experts(index, encoder, entry["adapter_experts"])
            elif item in backbone_walk.POSITIONS:
                layer = _make_wrapper(
                    index, encoder, item, wrappers[item], shared
                )
            else:
                raise _mismatch(f"unknown adapter position {item!r}.")
            steps.append((item, layer))
        plan.append((encoder, steps))
    shared.build_unbuilt()
    return plan


def _attach(encoder, item, layer):
    if item == EXPERTS:
        insert_adapter_experts(encoder, layer)
        return
    backbone_walk.replace_sublayer(encoder, item, layer)
    companion_layers.attach(encoder, item, layer)


def _detach(encoder, item):
    if item == EXPERTS:
        remove_adapter_experts(encoder)
        return
    wrapper = backbone_walk.sublayer(encoder, item)
    companion_layers.detach(encoder, item, wrapper)
    backbone_walk.replace_sublayer(encoder, item, wrapper.layer,
                                   untrack=wrapper)


@keras_mtl_export("keras_mtl.transfer.restore_transfer")
def restore_transfer(model, layout):
    """Re-creates the adapters described by `describe_transfer`.

    Call it on the model rebuilt from its config (same layers, no adapters),
    before loading its weights: it re-injects every `AdapterWrapper` (with
    its adapters, combiners and active adapter) and every adapter-expert
    mixture, in their original order, so that the model's variables and
    their order match the described model's, then restores the `trainable`
    flag of every variable. Weights saved from the described model (e.g. by
    `model.save_weights`) then load into it. `keras_mtl.MultiTaskModel` calls
    this function when it is loaded from a `.keras` file.

    All or nothing: if the layout does not match `model` (other encoders,
    sub-layers or variables, or adapters already present), the function
    raises a `ValueError` and leaves `model` as it was.

    Args:
        model: the Keras model (or layer) rebuilt from the described model's
            config.
        layout: the dict returned by `describe_transfer`, or `None` (no-op).

    Returns:
        `model`, modified in place.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(
    ...     backbone, ["sst2", "mnli"], reduction_factor=4)
    >>> layout = keras_mtl.transfer.describe_transfer(backbone)
    >>> rebuilt = keras_hub.models.BertBackbone.from_config(
    ...     backbone.get_config())
    >>> _ = keras_mtl.transfer.restore_transfer(rebuilt, layout)
    >>> keras_mtl.transfer.count_transfer_parameters(rebuilt)
    296
    >>> len(rebuilt.trainable_weights) == len(backbone.trainable_weights)
    True
    """
    if layout is None:
        return model
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            f"`model` must be a Keras model or layer. Received: model={model!r}"
        )
    _check_layout(layout)
    encoders = _encoders(model)
    expected = [
        (entry.get("index"), entry.get("path"), entry.get("class_name"))
        for entry in layout["encoders"]
    ]
    actual = [
        (index, path, type(encoder).__name__)
        for index, (path, encoder) in enumerate(encoders)
    ]
    if expected != actual:
        raise _mismatch(
            f"the model's encoders (index, path, class) are {actual}, the "
            f"layout's {expected}."
        )
    for path, encoder in encoders:
        present = [
            p
            for p in backbone_walk.POSITIONS
            if isinstance(backbone_walk.sublayer(encoder, p), AdapterWrapper)
        ]
        if present or find_adapter_experts(encoder) is not None:
            raise ValueError(
                f"Encoder {path!r} already has adapters or adapter experts; "
                "`restore_transfer` needs the model rebuilt from its config."
            )
    try:
        plan = _prepare(layout, encoders)
    except ValueError:
        raise
    except Exception as error:
        raise _mismatch(f"{type(error).__name__}: {error}") from error
    done = []
    try:
        for encoder, steps in plan:
            for item, layer in steps:
                _attach(encoder, item, layer)
                done.append((encoder, item))
        variables = variable_keys(model)
        keys = [key for key, _ in variables]
        saved = list(layout["trainable"])
        if keys != saved:
            missing = [k for k in saved if k not in set(keys)][:5]
            extra = [k for k in keys if k not in set(saved)][:5]
            raise _mismatch(
                f"the variables differ (the layout has {len(saved)}, the "
                f"model {len(keys)}; missing from the model: {missing}, "
                f"not in the layout: {extra}"
                + ("" if missing or extra else ", or their order differs")
                + ")."
            )
        flags = layout["trainable"]
        bad = [k for k in keys if not isinstance(flags[k], bool)][:5]
        if bad:
            raise _mismatch(f"non-boolean trainable flags for {bad}.")
    except Exception:
        for encoder, item in reversed(done):
            _detach(encoder, item)
        raise
    for key, variable in variables:
        variable.trainable = flags[key]
    link_prompts(model)
    return model
