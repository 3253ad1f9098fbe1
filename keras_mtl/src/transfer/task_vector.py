"""Task vectors (Ilharco et al., 2023): fine-tuned minus pre-trained weights."""

import io
import json
import numbers
import zipfile

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.transfer.layer_paths import variable_keys
from keras_mtl.src.utils.atomic_files import atomic_write

FORMAT = "keras_mtl.task_vector"
FORMAT_VERSION = 1
META_KEY = "__meta__"


def floating_variables(model, trainable_only=False):
    """`(key, variable)` for the floating-point variables of `model`."""
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            f"`model` must be a Keras model or layer. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            "`model` must be built (call it once, or `model.build(...)`). "
            f"Received: model={type(model).__name__}(name={model.name!r})"
        )
    return [
        (key, variable)
        for key, variable in variable_keys(model)
        if keras.backend.is_float_dtype(variable.dtype)
        and (variable.trainable or not trainable_only)
    ]


def match_variables(model, keys, shapes, argument="model"):
    """The variables of `model` for `keys`, matched by key, else by position.

    Models built from one config share their keys. Models whose layers were
    named automatically in different sessions do not; they are matched in
    `model.weights` order when their floating-point variables have exactly
    the given shapes, in order. Raises a `ValueError` otherwise.
    """
    candidates = floating_variables(model)
    by_key = dict(candidates)
    if all(key in by_key for key in keys):
        variables = [by_key[key] for key in keys]
    elif [tuple(v.shape) for _, v in candidates] == list(shapes):
        variables = [variable for _, variable in candidates]
    else:
        missing = [key for key in keys if key not in by_key][:5]
        raise ValueError(
            f"`{argument}` does not have the task vector's variables: "
            f"missing {missing} (of {len(keys)}), and its {len(candidates)} "
            "floating-point variables do not have the vector's shapes in "
            f"order. Received: {argument}={type(model).__name__}"
            f"(name={model.name!r})"
        )
    for key, variable, shape in zip(keys, variables, shapes):
        if tuple(variable.shape) != tuple(shape):
            raise ValueError(
                f"Variable {key!r} of `{argument}` has shape "
                f"{tuple(variable.shape)}; the task vector's has {shape}."
            )
    return variables


def _as_float(array):
    array = np.asarray(array)
    return array.astype("float64" if array.dtype == "float64" else "float32")


def _delta_dtype(variable):
    """float64 for float64 variables, else float32 (bfloat16 and float16
    deltas would lose the small changes they hold)."""
    dtype = keras.backend.standardize_dtype(variable.dtype)
    return "float64" if dtype == "float64" else "float32"


@keras_mtl_export("keras_mtl.transfer.TaskVector")
class TaskVector:
    """The weight change of a fine-tuned model, one array per variable.

    A task vector `tau = theta_ft - theta_pre` (Ilharco et al., 2023) is made
    by `keras_mtl.transfer.task_vector`. Task vectors add, subtract, negate
    and scale like vectors (`tau_a + tau_b`, `-tau`, `0.5 * tau`,
    `sum([...])`), and `apply_to(model, scaling_coef)` adds
    `scaling_coef * tau` to a model's weights: task arithmetic. Keys are the
    variables' paths in the fine-tuned model (layer names, then the
    variable's name).

    Args:
        deltas: dict mapping variable keys to arrays (float32, or float64
            for float64 variables), in the model's `weights` order.

    Example:

    >>> pre = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> tuned = keras.models.clone_model(pre)
    >>> tuned.set_weights([w + 1.0 for w in pre.get_weights()])
    >>> tau = keras_mtl.transfer.task_vector(tuned, pre)
    >>> tau.num_parameters
    8
    >>> bias = tau.keys[1]  # "dense/bias": layer path, variable name
    >>> float((0.5 * tau)[bias][0])
    0.5
    """

    def __init__(self, deltas):
        if not isinstance(deltas, dict) or not deltas:
            raise ValueError(
                "`deltas` must be a non-empty dict of variable keys to "
                f"arrays. Received: deltas={deltas!r}"
            )
        self._deltas = {}
        for key, value in deltas.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"Task vector keys must be strings. Received: {key!r}"
                )
            array = _as_float(value)
            if not np.all(np.isfinite(array)):
                raise ValueError(
                    f"The task vector entry {key!r} is not finite."
                )
            self._deltas[key] = array

    @property
    def keys(self):
        """The variable keys, in order."""
        return list(self._deltas)

    @property
    def shapes(self):
        """The arrays' shapes, in key order."""
        return [array.shape for array in self._deltas.values()]

    @property
    def num_parameters(self):
        """The number of scalars."""
        return int(sum(array.size for array in self._deltas.values()))

    def __getitem__(self, key):
        return self._deltas[key]

    def __len__(self):
        return len(self._deltas)

    def __iter__(self):
        return iter(self._deltas)

    def items(self):
        return self._deltas.items()

    def norm(self):
        """The Euclidean norm over all entries."""
        return float(np.sqrt(sum(
            np.sum(np.square(a, dtype="float64")) for a in self._deltas.values()
        )))

    def _check_compatible(self, other):
        if not isinstance(other, TaskVector):
            raise ValueError(
                "Task vectors combine only with task vectors. "
                f"Received: {type(other).__name__}"
            )
        if self.keys != other.keys or self.shapes != other.shapes:
            raise ValueError(
                "Task vectors of different models cannot be combined: their "
                f"keys or shapes differ ({len(self)} and {len(other)} "
                "variables)."
            )

    def __add__(self, other):
        if isinstance(other, numbers.Number) and other == 0:
            return self  # `sum(vectors)` starts from 0.
        self._check_compatible(other)
        return TaskVector({k: a + other[k] for k, a in self.items()})

    __radd__ = __add__

    def __neg__(self):
        return TaskVector({k: -a for k, a in self.items()})

    def __sub__(self, other):
        return self + (-other)

    def __mul__(self, scale):
        if not isinstance(scale, numbers.Real) or not np.isfinite(scale):
            raise ValueError(
                "A task vector is scaled by a finite real number. "
                f"Received: {scale!r}"
            )
        return TaskVector({k: a * scale for k, a in self.items()})

    __rmul__ = __mul__

    def apply_to(self, model, scaling_coef=1.0):
        """Adds `scaling_coef * tau` to the weights of `model`, in place.

        `model` is usually the pre-trained model (or one rebuilt from its
        config); its variables are matched to the vector's keys (or by
        position, see `task_vector`). All new values are computed before
        any variable changes, so a mismatch leaves `model` as it was.

        Args:
            model: a built Keras model or layer.
            scaling_coef: the factor `lambda`. Defaults to `1.0`.

        Returns:
            `model`.
        """
        if (
            not isinstance(scaling_coef, numbers.Real)
            or not np.isfinite(scaling_coef)
        ):
            raise ValueError(
                "`scaling_coef` must be a finite real number. "
                f"Received: scaling_coef={scaling_coef!r}"
            )
        variables = match_variables(model, self.keys, self.shapes)
        updates = []
        for variable, delta in zip(variables, self._deltas.values()):
            base = np.asarray(keras.ops.convert_to_numpy(variable), "float64")
            updates.append((variable, base + scaling_coef * delta))
        for variable, value in updates:
            variable.assign(value.astype(keras.backend.standardize_dtype(
                variable.dtype)))
        return model

    def save(self, path):
        """Writes the vector to `path` (NumPy `.npz`), atomically."""
        buffer = io.BytesIO()
        arrays = {f"v{i}": a for i, a in enumerate(self._deltas.values())}
        meta = {"format": FORMAT, "version": FORMAT_VERSION,
                "keys": self.keys}
        np.savez(buffer, **arrays, **{META_KEY: np.array(json.dumps(meta))})
        with atomic_write(path) as handle:
            handle.write(buffer.getvalue())

    @classmethod
    def load(cls, path):
        """Reads a vector written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data[META_KEY]))
                arrays = [data[f"v{i}"] for i in range(len(meta["keys"]))]
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"{path!r} is not a task vector file written by "
                f"`TaskVector.save` ({type(error).__name__}: {error})."
            ) from error
        if (meta.get("format"), meta.get("version")) != (
            FORMAT, FORMAT_VERSION
        ):
            raise ValueError(
                f"{path!r} is not a task vector file of version "
                f"{FORMAT_VERSION}. Received: {meta.get('format')!r} "
                f"version {meta.get('version')!r}"
            )
        return cls(dict(zip(meta["keys"], arrays)))

    @classmethod
    def zeros_like(cls, model, keys=None):
        """A zero vector for the floating-point variables of `model` (or
        those of `keys`)."""
        pairs = floating_variables(model)
        if keys is not None:
            by_key = dict(pairs)
            missing = [k for k in keys if k not in by_key][:5]
            if missing:
                raise ValueError(
                    f"`model` has no variables {missing}. Received: "
                    f"keys of length {len(keys)}"
                )
            pairs = [(k, by_key[k]) for k in keys]
        return cls({
            key: np.zeros(tuple(v.shape), _delta_dtype(v)) for key, v in pairs
        })


@keras_mtl_export("keras_mtl.transfer.task_vector")
def task_vector(fine_tuned, pre_trained, trainable_only=False):
    """The task vector `theta_fine_tuned - theta_pre_trained`.

    Task arithmetic (Ilharco et al., 2023) edits a model by adding scaled
    task vectors to its pre-trained weights: `tau_a + tau_b` learns both
    tasks, `-tau` forgets one. Variables are matched by their path (the
    models share their layer names, e.g. one is a `clone_model` or a
    loaded copy of the other), or else by position when both models have
    floating-point variables of the same shapes in the same order.

    Args:
        fine_tuned: the built, fine-tuned Keras model (or layer).
        pre_trained: the model it was fine-tuned from, same architecture.
        trainable_only: keep only the variables that are trainable in
            `fine_tuned` (e.g. leave out normalisation statistics).
            Defaults to `False`: every floating-point variable, as
            Ilharco et al. do with a PyTorch state dict.

    Returns:
        A `keras_mtl.transfer.TaskVector`.

    Example:

    >>> pre = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> tuned = keras.models.clone_model(pre)
    >>> tuned.set_weights([w + 1.0 for w in pre.get_weights()])
    >>> tau = keras_mtl.transfer.task_vector(tuned, pre)
    >>> [key.split("/")[-1] for key in tau.keys]
    ['kernel', 'bias']

    Reference:
        - [Ilharco et al., 2023](https://arxiv.org/abs/2212.04089)
    """
    pairs = floating_variables(fine_tuned, trainable_only)
    if not pairs:
        raise ValueError(
            "`fine_tuned` has no floating-point variables. Received: "
            f"fine_tuned={type(fine_tuned).__name__}"
        )
    keys = [key for key, _ in pairs]
    shapes = [tuple(v.shape) for _, v in pairs]
    if trainable_only:
        base = dict(floating_variables(pre_trained))
        if all(key in base for key in keys):
            bases = [base[key] for key in keys]
        else:
            raise ValueError(
                "`pre_trained` does not have the variables of `fine_tuned` "
                "(with `trainable_only=True`, the models must share their "
                "layer names)."
            )
    else:
        bases = match_variables(pre_trained, keys, shapes, "pre_trained")
    deltas = {}
    for (key, variable), base in zip(pairs, bases):
        if tuple(base.shape) != tuple(variable.shape):
            raise ValueError(
                f"Variable {key!r} has shape {tuple(variable.shape)} in "
                f"`fine_tuned` and {tuple(base.shape)} in `pre_trained`."
            )
        tuned = np.asarray(keras.ops.convert_to_numpy(variable), "float64")
        before = np.asarray(keras.ops.convert_to_numpy(base), "float64")
        deltas[key] = (tuned - before).astype(_delta_dtype(variable))
    return TaskVector(deltas)


@keras_mtl_export("keras_mtl.transfer.task_arithmetic")
def task_arithmetic(model, task_vectors, scaling_coef=1.0):
    """Adds `scaling_coef * sum(task_vectors)` to `model`'s weights.

    Task arithmetic (Ilharco et al., 2023): with `model` the pre-trained
    model, adding several task vectors gives one model for all their tasks
    (the paper tunes `scaling_coef` on validation data; 0.3-0.8 is common),
    and a negated vector (`-tau`) removes a task. The model is changed in
    place, all at once or not at all.

    Args:
        model: a built Keras model (or layer), usually the pre-trained one.
        task_vectors: a `TaskVector` or a non-empty list of them, from
            models of `model`'s architecture.
        scaling_coef: the factor `lambda`. Defaults to `1.0`.

    Returns:
        `model`.

    Example:

    >>> pre = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> tuned = keras.models.clone_model(pre)
    >>> tuned.set_weights([w + 1.0 for w in pre.get_weights()])
    >>> tau = keras_mtl.transfer.task_vector(tuned, pre)
    >>> edited = keras.models.clone_model(pre)
    >>> edited.set_weights(pre.get_weights())
    >>> _ = keras_mtl.transfer.task_arithmetic(edited, [tau, tau], 0.25)
    >>> bool(np.allclose(edited.get_weights()[1], pre.get_weights()[1] + 0.5))
    True

    Reference:
        - [Ilharco et al., 2023](https://arxiv.org/abs/2212.04089)
    """
    return sum(check_vectors(task_vectors)).apply_to(model, scaling_coef)


def check_vectors(task_vectors):
    """A non-empty list of task vectors of one architecture (a single
    vector is a list of one)."""
    if isinstance(task_vectors, TaskVector):
        task_vectors = [task_vectors]
    if (
        not isinstance(task_vectors, (list, tuple))
        or not task_vectors
        or not all(isinstance(t, TaskVector) for t in task_vectors)
    ):
        raise ValueError(
            "`task_vectors` must be a TaskVector or a non-empty list of "
            f"them. Received: task_vectors={task_vectors!r}"
        )
    first = task_vectors[0]
    for index, other in enumerate(task_vectors[1:], 1):
        if other.keys != first.keys or other.shapes != first.shapes:
            raise ValueError(
                "All task vectors must come from one architecture (same "
                f"keys and shapes); task vector {index} differs from the "
                "first."
            )
    return list(task_vectors)
