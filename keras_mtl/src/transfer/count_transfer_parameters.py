"""`count_transfer_parameters`: the size of adapters and combiners."""

import math

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.transfer import backbone_walk


@keras_mtl_export("keras_mtl.transfer.count_transfer_parameters")
def count_transfer_parameters(backbone, task_name=None):
    """Counts the scalar parameters of adapters and combiners.

    Variables shared between layers (the scales of the "++" ScaLearn
    variants) are counted once. Backbone variables are never counted.

    Args:
        backbone: a model prepared with `add_adapters`.
        task_name: `None` (default) to count the *trainable* transfer
            parameters, i.e. those of the active adapter or combination; or
            a task or combination name to count all of its parameters,
            whether trainable or not.

    Returns:
        The number of parameters, a Python int.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(
    ...     backbone, ["sst2", "mnli"], reduction_factor=4)
    >>> # (16*4 + 4 + 4*16 + 16) weights per layer, 2 layers
    >>> keras_mtl.transfer.count_transfer_parameters(backbone, "mnli")
    296
    """
    found = backbone_walk.wrappers_or_raise(backbone)
    if task_name is None:
        variables = [
            v
            for v in backbone_walk.transfer_variables(found)
            if v.trainable
        ]
    else:
        backbone_walk.check_known(found, task_name, "task_name")
        variables = backbone_walk.unit_variables(found, task_name)
    return sum(math.prod(v.shape) for v in variables)
