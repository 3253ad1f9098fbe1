"""`average_adapter`: a new task adapter from a weighted mix of others."""

import numbers

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.compacter_adapter import CompacterAdapter
from keras_mtl.src.layers.lora_adapter import LoRAAdapter
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.adapter_wrapper import check_name
from keras_mtl.src.transfer.add_adapters import task_name_list
from keras_mtl.src.transfer.set_active_adapter import set_active_adapter

COMBINE = ("linear", "lora_svd")


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), "float64")


def _weights(weights, count, normalize):
    if weights is None:
        weights = [1.0] * count
    if (
        not isinstance(weights, (list, tuple))
        or len(weights) != count
        or not all(isinstance(w, numbers.Real) and np.isfinite(w)
                   for w in weights)
    ):
        raise ValueError(
            f"`weights` must be a list of {count} finite numbers, one per "
            f"source. Received: weights={weights!r}"
        )
    weights = np.asarray(weights, "float64")
    if normalize:
        total = weights.sum()
        if abs(total) < 1e-12:
            raise ValueError(
                "`weights` sum to zero and cannot be normalised; pass "
                "`normalize_weights=False` for differences such as "
                f"[1, -1]. Received: weights={list(weights)!r}"
            )
        weights = weights / total
    return weights


def _linear(adapters, weights):
    """`(class, config, values)` of an adapter like the first whose tensors
    are `sum_i w_i Phi_i`."""
    if any(isinstance(a, CompacterAdapter) for a in adapters):
        raise ValueError(
            "Compacter adapters share their PHM rules across the model; "
            "they cannot be averaged one position at a time."
        )
    if any(getattr(a, "generator", None) is not None for a in adapters):
        raise ValueError(
            "Generated prefixes share one MLP per task; call "
            "`keras_mtl.transfer.eject_prefix` on the sources first, then "
            "average the flat prefixes."
        )
    shapes = [[tuple(v.shape) for v in a.weights] for a in adapters]
    if any(s != shapes[0] for s in shapes) or len(
        {type(a) for a in adapters}
    ) != 1:
        raise ValueError(
            "Linear averaging needs adapters of one kind and size; the "
            f"sources have weight shapes {shapes}."
        )
    values = [
        sum(w * _numpy(a.weights[k]) for w, a in zip(weights, adapters))
        for k in range(len(shapes[0]))
    ]
    return type(adapters[0]), adapters[0].get_config(), values


def _svd(adapters, weights, rank):
    """`(class, config, values)` of the rank-`rank` LoRA adapter closest
    (Frobenius) to `sum_i w_i (alpha_i / r_i) A_i B_i`."""
    if not all(isinstance(a, LoRAAdapter) for a in adapters):
        raise ValueError(
            "`combine=\"lora_svd\"` merges LoRA adapters only. Received "
            f"sources of kind {sorted({type(a).__name__ for a in adapters})}"
        )
    delta = sum(w * _numpy(a.delta_kernel())
                for w, a in zip(weights, adapters))
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    root = np.sqrt(s[:rank])
    a_new = u[:, :rank] * root
    b_new = root[:, None] * vt[:rank]
    config = adapters[0].get_config()
    config.update(rank=rank, alpha=float(rank))  # scale 1: A B is the delta
    return LoRAAdapter, config, [a_new, b_new]


@keras_mtl_export("keras_mtl.transfer.average_adapter")
def average_adapter(
    backbone,
    task_name,
    source_task_names,
    weights=None,
    normalize_weights=True,
    combine="linear",
    svd_rank=None,
):
    """Adds an adapter made from a weighted mix of existing adapters.

    At every adapter position, the new adapter of `task_name` gets:

    - `combine="linear"`: each weight tensor `Phi = sum_i w_i Phi_i`
      (parameter averaging, as `adapters`' `average_adapter`; for
      bottleneck adapters this is not the average of their outputs, which
      `add_combiner(..., "average")` computes; for LoRA it averages `A` and
      `B` separately, so the update is `(sum_i w_i A_i)(sum_i w_i B_i)`, not
      `sum_i w_i A_i B_i`). Sources must have equal shapes.
    - `combine="lora_svd"` (LoRA only): the rank-`svd_rank` truncated SVD of
      the merged update `Delta W = sum_i w_i (alpha_i / r_i) A_i B_i`,
      split as `A = U sqrt(S)`, `B = sqrt(S) V^T` with `alpha = svd_rank`
      (so the new adapter's update is exactly the truncation, whatever the
      sources' scales). Exact when `svd_rank` is at least the rank of
      `Delta W` (at most the sum of the sources' ranks).

    Weights are divided by their sum unless `normalize_weights=False`,
    which allows differences such as `[1, -1]` (task negation). The active
    adapter is unchanged; the new one is frozen until activated.
    Everything is computed before the backbone changes.

    Args:
        backbone: a model prepared with `add_adapters`.
        task_name: name of the new adapter (a new task name).
        source_task_names: list of task names of existing adapters.
        weights: one finite number per source. Defaults to `None` (equal).
        normalize_weights: divide the weights by their sum. Defaults to
            `True`.
        combine: `"linear"` or `"lora_svd"`. Defaults to `"linear"`.
        svd_rank: rank of the `"lora_svd"` result. Defaults to `None`: the
            first source's rank.

    Returns:
        `backbone`, modified in place.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(backbone, ["a", "b"], "lora")
    >>> _ = keras_mtl.transfer.average_adapter(
    ...     backbone, "ab", ["a", "b"], combine="lora_svd", svd_rank=16)
    >>> keras_mtl.transfer.count_transfer_parameters(backbone, "ab")
    2048
    """
    found = backbone_walk.wrappers_or_raise(backbone)
    check_name(task_name, "task_name")
    if task_name in found[0][2].names:
        raise ValueError(
            f"`backbone` already has an adapter or combination named "
            f"{task_name!r}. Received: task_name={task_name!r}"
        )
    sources = task_name_list(source_task_names, "source_task_names")
    for source in sources:
        backbone_walk.check_known(found, source, "source_task_names",
                                  kinds=("adapters",))
    if combine not in COMBINE:
        raise ValueError(
            f"`combine` must be one of {COMBINE}. Received: combine={combine!r}"
        )
    weights = _weights(weights, len(sources), normalize_weights)
    if combine == "lora_svd":
        first = found[0][2].adapters[sources[0]]
        svd_rank = getattr(first, "rank", 1) if svd_rank is None else svd_rank
        if isinstance(svd_rank, bool) or not isinstance(
            svd_rank, numbers.Integral
        ) or svd_rank < 1:
            raise ValueError(
                "`svd_rank` must be a positive int. "
                f"Received: svd_rank={svd_rank!r}"
            )
    planned = []
    for _, _, wrapper in found:
        adapters = [wrapper.adapters[s] for s in sources]
        if combine == "linear":
            planned.append((wrapper, *_linear(adapters, weights)))
        else:
            planned.append((wrapper, *_svd(adapters, weights,
                                           int(svd_rank))))
    active = found[0][2].active
    for wrapper, cls, config, values in planned:
        layer = cls.from_config({**config, "name": f"{task_name}_adapter"})
        wrapper.add_adapter(task_name, layer)
        for variable, value in zip(layer.weights, values):
            variable.assign(value.astype(
                keras.backend.standardize_dtype(variable.dtype)))
    set_active_adapter(backbone, active)
    return backbone
