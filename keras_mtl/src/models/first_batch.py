"""Describes the first batch of any `fit`/`evaluate` input without losing it.

`MultiTaskModel` validates labels before Keras starts a step: on JAX an error
inside the first traced step leaves the model's variables purged. `peek` and
`peek_validation` give the first batch's structure, shapes and dtypes as
`keras.KerasTensor` leaves, for every input kind `fit` accepts, and return
the data to pass on in place of the original (re-wrapped only for one-shot
iterators).

Shapes: for in-memory arrays the leading dim is the number of samples (so
arrays of different lengths are caught); for a `tf.data.Dataset` the
shapes are its `element_spec`'s (dims may be `None`); where a batch was
actually drawn (generators, iterators, `PyDataset`, torch `DataLoader`, or a
`tf.data.Dataset` whose label dims are unknown) they are that batch's
concrete shapes.

No backend is imported here: datasets and loaders are recognised by their
classes' names and modules, as Keras' own data adapters do.
"""

import collections
import collections.abc

import keras
import numpy as np

FirstBatch = collections.namedtuple("FirstBatch", ["x", "y", "sample_weight"])
FirstBatch.__doc__ = """Specs of the first batch: `(x, y, sample_weight)`,
each a nested structure of `keras.KerasTensor` leaves, or `None`."""

EMPTY = FirstBatch(None, None, None)
"""The `batch` of an input known to hold no batch at all (an empty
dataset, loader, `PyDataset` or iterator)."""


def peek(x, y=None, sample_weight=None):
    """Describes the first batch `fit(x, y, sample_weight=...)` would see.

    Returns:
        `(x, y, sample_weight, batch)`: the data to pass on instead of the
        arguments (the same objects unless `x` is a one-shot iterator, which
        is replaced by a generator that still yields every element) and a
        `FirstBatch` of specs, `EMPTY` when `x` holds no batch, or `None`
        when `x` is of an unknown kind.

    In-memory arrays with per-task sample weights for only some tasks get
    weights of 1 for the others (Keras' array adapter needs one weight
    array per label array).
    """
    if x is None:
        return x, y, sample_weight, None
    if _is_arrays((x, y, sample_weight)):
        sample_weight = _complete_weights(y, sample_weight)
        spec = _map(_leaf_spec, (x, y, sample_weight))
        return x, y, sample_weight, FirstBatch(*spec)
    if _is_tf_dataset(x):
        return x, y, sample_weight, _dataset_batch(x)
    if _is_distributed_tf_dataset(x) or _is_grain(x):
        return x, y, sample_weight, None
    if isinstance(x, keras.utils.PyDataset):
        return x, y, sample_weight, _py_dataset_batch(x)
    if _is_torch_dataloader(x):
        for data in x:
            return x, y, sample_weight, _unpacked_batch(data)
        return x, y, sample_weight, EMPTY
    if isinstance(x, collections.abc.Iterator):
        try:
            first = next(x)
        except StopIteration:
            return x, y, sample_weight, EMPTY
        return _prepend(first, x), y, sample_weight, _unpacked_batch(first)
    return x, y, sample_weight, None


def peek_validation(validation_data):
    """Describes the first batch of `fit`'s `validation_data`.

    A tuple or list is unpacked as `(x_val, y_val[, sw_val])`, like Keras
    does; anything else is handled as `x` by `peek`.

    Returns:
        `(validation_data, batch)`: the data to pass on (the same object when
        nothing was re-wrapped, else one of the same length and container
        kind) and a `FirstBatch` or `None`.
    """
    if validation_data is None:
        return None, None
    if not isinstance(validation_data, (tuple, list)):
        data, _, _, batch = peek(validation_data)
        return data, batch
    try:
        parts = keras.utils.unpack_x_y_sample_weight(validation_data)
    except ValueError:
        return validation_data, None
    *new, batch = peek(*parts)
    if all(a is b for a, b in zip(new, parts)):
        return validation_data, batch
    new = new[: len(validation_data)]
    if isinstance(validation_data, list):
        return new, batch
    return tuple(new), batch


def _prepend(first, rest):
    """A generator yielding `first`, then the rest of the iterator."""
    yield first
    yield from rest


def _unpacked_batch(data):
    """`FirstBatch` of concrete specs for one drawn element."""
    try:
        parts = keras.utils.unpack_x_y_sample_weight(data)
    except ValueError:
        return None
    return FirstBatch(*_map(_leaf_spec, parts))


def _py_dataset_batch(dataset):
    """`FirstBatch` of `dataset[0]`; `EMPTY` when it has no batch."""
    try:
        num_batches = dataset.num_batches
    except (NotImplementedError, TypeError):
        num_batches = None
    if num_batches == 0:
        return EMPTY
    return _unpacked_batch(dataset[0])


def _dataset_batch(dataset):
    """`FirstBatch` from a `tf.data.Dataset`'s `element_spec`; one element
    is taken when the label dims are unknown there."""
    if int(dataset.cardinality()) == 0:
        return EMPTY
    try:
        parts = keras.utils.unpack_x_y_sample_weight(dataset.element_spec)
    except ValueError:
        return None
    if not _has_unknown_dims(parts[1:]):
        return FirstBatch(*_map(_leaf_spec, parts))
    for element in dataset.take(1):
        return _unpacked_batch(element)
    return EMPTY


def _has_unknown_dims(specs):
    """Whether a present leaf has an unknown rank or non-batch dim."""

    def unknown(spec):
        if spec is None:
            return False
        shape = _shape(spec.shape) if hasattr(spec, "shape") else None
        return shape is None or None in shape[1:]

    return any(_flatten(_map(unknown, specs)))


def _flatten(structure):
    """The leaves of nested dicts, lists and tuples, in order."""
    out = []
    _map(out.append, structure)
    return out


def _map(fn, structure):
    """Maps `fn` over the leaves of nested dicts, lists and tuples."""
    if isinstance(structure, collections.abc.Mapping):
        items = {k: _map(fn, v) for k, v in structure.items()}
        try:
            return type(structure)(items)
        except TypeError:
            return items
    if isinstance(structure, list):
        return [_map(fn, v) for v in structure]
    if isinstance(structure, tuple):
        items = [_map(fn, v) for v in structure]
        if hasattr(structure, "_fields"):
            return type(structure)(*items)
        return tuple(items)
    return fn(structure)


def _is_array(leaf):
    """Whether Keras' array adapter takes `leaf` (as `can_slice_array`)."""
    return (
        leaf is None
        or hasattr(leaf, "__array__")
        or (hasattr(leaf, "shape") and hasattr(leaf, "dtype"))
    )


def _is_arrays(structure):
    """Whether every leaf is an array, a tensor or `None`."""
    return all(_flatten(_map(_is_array, structure)))


def _shape(shape):
    """A tuple of ints and `None`s, or `None` for an unknown rank."""
    if getattr(shape, "rank", 0) is None:
        return None
    if hasattr(shape, "as_list"):
        shape = shape.as_list()
    return tuple(None if d is None else int(d) for d in shape)


def _dtype(dtype):
    """Keras' name for `dtype`, or `None` when Keras has none."""
    if dtype is None:
        return None
    try:
        return keras.backend.standardize_dtype(dtype)
    except (ValueError, TypeError):
        pass
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return None
    return "string" if kind in "US" else None


def _complete_weights(y, sample_weight):
    """A dict of weights naming some of the dict `y`'s keys (or holding
    None for some), completed with ones for the others; anything else
    unchanged. (Keras' data adapters and `tf.distribute` take no None.)"""
    if not (isinstance(y, dict) and isinstance(sample_weight, dict)):
        return sample_weight
    missing = [k for k in y if sample_weight.get(k) is None]
    if not missing or not y or not hasattr(y[missing[0]], "shape"):
        return sample_weight
    count = y[missing[0]].shape[0]
    ones = {k: np.ones((count,), "float32") for k in missing}
    return {**{k: w for k, w in sample_weight.items() if w is not None},
            **ones}


def _leaf_spec(leaf):
    """`keras.KerasTensor` describing one leaf, or `None`."""
    if leaf is None:
        return None
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        if isinstance(leaf, (bool, int, float, complex, str)):
            return keras.KerasTensor((), _dtype(type(leaf)))
        if not hasattr(leaf, "__array__"):
            return None
        try:
            leaf = np.asarray(leaf)
        except Exception:
            return None
    shape = _shape(leaf.shape)
    dtype = _dtype(leaf.dtype)
    if shape is None or dtype is None:
        return None
    names = {c.__name__ for c in type(leaf).__mro__}
    sparse = bool(names & {"SparseTensor", "SparseTensorSpec", "BCOO"})
    sparse = sparse or str(type(leaf).__module__).startswith("scipy.sparse")
    ragged = bool(names & {"RaggedTensor", "RaggedTensorSpec"})
    return keras.KerasTensor(shape, dtype, sparse=sparse, ragged=ragged)


def _has_parent(x, names, module):
    """Whether a class of `x`'s MRO has one of `names` and is in `module`."""
    return any(
        c.__name__ in names and module in str(c.__module__)
        for c in type(x).__mro__
    )


def _is_tf_dataset(x):
    return _has_parent(x, ("DatasetV2",), "tensorflow.python.")


def _is_distributed_tf_dataset(x):
    names = ("DistributedDataset", "DistributedDatasetsFromFunction")
    return _has_parent(x, names, "tensorflow.python.")


def _is_torch_dataloader(x):
    return _has_parent(x, ("DataLoader",), "torch.utils.data")


def _is_grain(x):
    names = ("MapDataset", "IterDataset", "DataLoader")
    return _has_parent(x, names, "grain")
