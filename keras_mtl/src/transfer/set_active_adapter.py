"""`set_active_adapter`: which adapter (or combination) runs and trains."""

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer import composition


def freeze_backbone_weights(backbone, found):
    """Sets `trainable=False` on every variable outside adapters/combiners.

    Flags are set per variable: setting `layer.trainable` would also flip
    the adapters nested in the wrapped layers.
    """
    transfer_ids = {id(v) for v in backbone_walk.transfer_variables(found)}
    for variable in backbone.weights:
        if id(variable) not in transfer_ids:
            variable.trainable = False


@keras_mtl_export("keras_mtl.transfer.set_active_adapter")
def set_active_adapter(backbone, task_name):
    """Chooses the adapter (or combination) that runs and trains.

    In every `AdapterWrapper` of `backbone`, the adapters of `task_name` (or
    the combiners of the combination `task_name`, see `add_combiner`) become
    the active ones. Exactly their variables are made trainable (except
    those the layers create non-trainable, such as an annealed
    temperature); the
    variables of every other adapter and combiner are frozen (the sources
    of a combination stay frozen). Other backbone variables are left as
    they are. `task_name=None` deactivates all adapters: the backbone then
    computes its original function, and no adapter variable trains. A
    composition (`keras_mtl.transfer.Stack`, `BatchSplit`, `Parallel`; see
    `keras_mtl.src.transfer.composition` for the allowed nestings) runs
    several adapters at once, and all of them train.

    Compile (or re-compile) the model that uses `backbone` afterwards:
    Keras fixes the list of trainable variables and traces the active
    adapter at compile time.

    Args:
        backbone: a model prepared with `add_adapters`.
        task_name: a task of `add_adapters`, a combination name of
            `add_combiner`, a composition of these, or `None`.

    Returns:
        `backbone`, modified in place.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(
    ...     backbone, ["sst2", "mnli"], reduction_factor=4)
    >>> _ = keras_mtl.transfer.set_active_adapter(backbone, "mnli")
    >>> sorted({w.path.split("/")[-2] for w in backbone.trainable_weights})
    ['mnli_adapter']
    """
    found = backbone_walk.wrappers_or_raise(backbone)
    if task_name is not None and not isinstance(
            task_name, (str, composition.Composition)):
        raise ValueError(
            "`task_name` must be a name, a composition (`Stack`, "
            f"`BatchSplit`, `Parallel`) or None. Received: "
            f"task_name={task_name!r}")
    names = composition.leaves(task_name)
    for name in names:
        backbone_walk.check_known(found, name, "task_name")
    # Every wrapper accepts it before any changes (prompts take no
    # composition).
    for _, _, wrapper in found:
        wrapper.check_active(task_name)
    for _, _, wrapper in found:
        wrapper.set_active(task_name)
    active_ids = {
        id(v) for name in names
        for v in backbone_walk.unit_variables(found, name)
    }
    # Variables the layers create non-trainable (e.g. AdapterFusion's
    # annealed temperature) never become trainable.
    for _, _, wrapper in found:
        active_ids -= wrapper.non_trainable_ids
    for variable in backbone_walk.transfer_variables(found):
        variable.trainable = id(variable) in active_ids
    return backbone
