"""`eject_prefix`: keep a task's prefixes, drop their MLP."""

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.prefix_adapter import PrefixAdapter
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.add_adapters import task_name_list
from keras_mtl.src.transfer.set_active_adapter import set_active_adapter


def _generated(found, task):
    """`[(wrapper, adapter)]`: the task's prefixes made by an MLP."""
    return [
        (wrapper, wrapper.adapters[task])
        for _, _, wrapper in found
        if isinstance(wrapper.adapters[task], PrefixAdapter)
        and not wrapper.adapters[task].flat
    ]


@keras_mtl_export("keras_mtl.transfer.eject_prefix")
def eject_prefix(backbone, task_names=None):
    """Replaces generated prefixes by flat ones holding the same values.

    Prefix tuning trains the prefixes through a reparametrisation MLP
    (`keras_mtl.layers.PrefixGenerator`) and keeps only its output after
    training (Li & Liang, 2021; `adapters`' `eject_prefix_tuning`). This
    function evaluates every prefix of each task once and puts a flat
    `keras_mtl.layers.PrefixAdapter` with those values in its place, so the
    backbone computes the same function with `2 l L d` prefix weights per
    task and no MLP. All values are computed before anything changes; the
    active task and the `trainable` flags are kept as `set_active_adapter`
    sets them. Re-compile the model afterwards.

    Args:
        backbone: a model prepared with `add_adapters(...,
            config="prefix_tuning")` (or a union with prefix tuning).
        task_names: a task or list of tasks whose prefixes are ejected.
            Defaults to `None`: every task with generated prefixes.

    Returns:
        `backbone`, modified in place.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> config = keras_mtl.transfer.PrefixTuningConfig(
    ...     prefix_length=3, bottleneck_size=8)
    >>> _ = keras_mtl.transfer.add_adapters(backbone, "sst2", config=config)
    >>> keras_mtl.transfer.count_transfer_parameters(backbone)  # with MLP
    760
    >>> _ = keras_mtl.transfer.eject_prefix(backbone)
    >>> keras_mtl.transfer.count_transfer_parameters(backbone)  # 2 l L d
    192
    """
    found = backbone_walk.wrappers_or_raise(backbone)
    if task_names is None:
        task_names = [t for t in found[0][2].adapters if _generated(found, t)]
        if not task_names:
            raise ValueError(
                "`backbone` has no generated prefixes to eject. "
                f"Received: backbone={type(backbone).__name__}"
                f"(name={backbone.name!r})")
    task_names = task_name_list(task_names)
    for task in task_names:
        backbone_walk.check_known(found, task, "task_names", ("adapters",))
        if not _generated(found, task):
            raise ValueError(
                f"Task {task!r} has no generated prefixes (not prefix "
                f"tuning, or already ejected). Received: task_names="
                f"{task_names!r}")
    plan = []
    for task in task_names:
        for wrapper, adapter in _generated(found, task):
            value = keras.ops.convert_to_numpy(adapter.value())
            plan.append((wrapper, task, adapter, value.reshape(
                (adapter.prefix_length, -1))))
    for wrapper, task, adapter, value in plan:
        flat = PrefixAdapter(adapter.prefix_length,
                             dtype=adapter.dtype_policy, name=adapter.name)
        wrapper.replace_adapter(task, flat)
        flat.prefix.assign(value.astype(
            keras.backend.standardize_dtype(flat.prefix.dtype)))
    set_active_adapter(backbone, found[0][2].active)
    return backbone
