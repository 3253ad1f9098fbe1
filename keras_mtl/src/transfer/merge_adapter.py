"""`merge_adapter`: fold a task's LoRA or (IA)^3 adapters into the weights."""

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.ia3_adapter import IA3Adapter
from keras_mtl.src.layers.lora_adapter import LoRAAdapter
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.adapter_configs import applies_activation


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), "float64")


def _plan(encoder, wrappers, task_name):
    """`{id(variable): (variable, new value)}` for one encoder."""
    new = {}

    def current(variable):
        return new.get(id(variable), (variable, _numpy(variable)))[1]

    def put(variable, value):
        new[id(variable)] = (variable, value)

    for slot, wrapper in wrappers:
        adapter = wrapper.adapters[task_name]
        layer = wrapper.layer
        kernel = layer.kernel
        if isinstance(adapter, LoRAAdapter):
            delta = _numpy(adapter.lora_a) @ _numpy(adapter.lora_b)
            put(kernel, current(kernel)
                + adapter.scale * delta.reshape(kernel.shape))
            continue
        scale = _numpy(adapter.scale)
        if applies_activation(layer):
            # `l * act(x W + b)`: the scale moves to the rows of the next
            # projection, which reads these activations.
            if slot != backbone_walk.FEEDFORWARD_INPUT:
                raise ValueError(
                    f"Cannot merge the (IA)^3 scale after the activation of "
                    f"{layer.name!r}: no linear layer follows it."
                )
            following = backbone_walk.sublayer(
                encoder, backbone_walk.FEEDFORWARD_OUTPUT)
            following = getattr(following, "layer", following)
            rows = following.kernel
            put(rows, current(rows) * scale.reshape((-1,) + (1,) * (
                len(rows.shape) - 1)))
            continue
        put(kernel, current(kernel) * scale)
        if getattr(layer, "bias", None) is not None:
            put(layer.bias, current(layer.bias) * scale)
    return new


@keras_mtl_export("keras_mtl.transfer.merge_adapter")
def merge_adapter(backbone, task_name):
    """Folds a task's LoRA or (IA)^3 adapters into the backbone's weights.

    LoRA's update is added to each adapted kernel, `W + (alpha / r) A B`
    (Hu et al., 2022); an (IA)^3 vector scales the kernel's (and bias')
    output columns, or, after an activation (the feed-forward intermediate
    dense), the rows of the following projection. The adapter wrappers are
    then removed, so the backbone computes the adapted function with its
    own layers only, at no extra inference cost, and saves like a plain
    keras-hub backbone. Bottleneck adapters are non-linear and cannot be
    merged.

    The backbone must hold only this task's adapters (a merge would change
    what the other tasks' adapters see): load the adapter into a copy of
    the backbone first. All new values are computed before any variable
    changes. The `trainable` flags of the backbone's own variables are
    kept (frozen by `add_adapters`).

    Args:
        backbone: a model prepared with `add_adapters(...,
            config="lora" | "ia3")`.
        task_name: the task whose adapters are merged.

    Returns:
        `backbone`, modified in place.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(backbone, "sst2", config="lora")
    >>> _ = keras_mtl.transfer.merge_adapter(backbone, "sst2")
    >>> keras_mtl.transfer.describe_transfer(backbone) is None
    True
    """
    found = backbone_walk.wrappers_or_raise(backbone)
    backbone_walk.check_known(found, task_name, "task_name", ("adapters",))
    others = [n for n in found[0][2].names if n != task_name]
    if others:
        raise ValueError(
            f"The backbone also holds the adapters or combinations {others}; "
            "merging would change what they see. Merge in a copy that holds "
            f"only {task_name!r} (e.g. `load_adapter` into a fresh backbone)."
            f" Received: task_name={task_name!r}"
        )
    kinds = {type(w.adapters[task_name]) for _, _, w in found}
    if not kinds <= {LoRAAdapter, IA3Adapter}:
        raise ValueError(
            "Only LoRA and (IA)^3 adapters are linear in the weights and can "
            f"be merged; {task_name!r} uses "
            f"{sorted(k.__name__ for k in kinds)}. Received: "
            f"task_name={task_name!r}"
        )
    encoders = backbone_walk.transformer_encoders(backbone)
    updates = {}
    for index, encoder in enumerate(encoders):
        wrappers = [(slot, w) for i, slot, w in found if i == index]
        updates.update(_plan(encoder, wrappers, task_name))
    for variable, value in updates.values():
        variable.assign(value.astype(
            keras.backend.standardize_dtype(variable.dtype)))
    for index, slot, wrapper in found:
        backbone_walk.replace_sublayer(encoders[index], slot, wrapper.layer,
                                       untrack=wrapper)
    return backbone
