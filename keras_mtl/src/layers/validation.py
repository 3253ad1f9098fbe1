"""Argument checks shared by the layers; each raises a `ValueError` that
names the argument and the value received; and the serialisation of the
initializers and regularizers they keep."""

import numbers

import keras


def check_positive_number(name, value, allow_none=False):
    if value is None and allow_none:
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value > 0
    ):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )
    return value


def check_positive_int(name, value, allow_none=False, minimum=1):
    if value is None and allow_none:
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def check_rate(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= value < 1
    ):
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def check_non_negative(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value >= 0
    ):
        raise ValueError(
            f"`{name}` must be a non-negative number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )
    return value


def get_activation(value):
    try:
        return keras.activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`activation` must be a Keras activation. "
            f"Received: activation={value!r}"
        ) from error


def get_initializer(name, value):
    try:
        return keras.initializers.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be a Keras initializer. Received: {name}={value!r}"
        ) from error


def serialize_objects(layer, *names):
    """`{name: config}` for the initializers and regularizers that `layer`
    keeps under these attribute names (for `get_config`)."""
    return {
        name: keras.saving.serialize_keras_object(getattr(layer, name))
        for name in names
    }


def last_dim(name, shape):
    """The known last dimension of `shape`, or a `ValueError`."""
    dim = None if not shape else shape[-1]
    if dim is None:
        raise ValueError(
            f"The last dimension of `{name}` must be known. "
            f"Received: {name} shape={shape}"
        )
    return int(dim)


def split_shapes(shapes, count):
    """The `count` shapes of a list input, or None if `shapes` is not a list
    of exactly `count` shapes (a single shape is a tuple of ints/None)."""
    if not isinstance(shapes, (list, tuple)) or len(shapes) != count:
        return None
    if any(not isinstance(s, (list, tuple)) for s in shapes):
        return None
    return [tuple(s) for s in shapes]
