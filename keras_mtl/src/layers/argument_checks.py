"""Argument checks shared by the layers, with the "Received: arg=value"
message template."""


def check_positive_int(value, arg_name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"`{arg_name}` must be an int >= {minimum}. Received: "
            f"{arg_name}={value!r}"
        )
    return value


def check_choice(value, arg_name, choices):
    if value not in choices:
        raise ValueError(
            f"`{arg_name}` must be one of {choices}. Received: "
            f"{arg_name}={value!r}"
        )
    return value


def split_shapes(shapes, count):
    """The `count` shapes of a list input, or None if `shapes` is not a list
    of exactly `count` shapes (a single shape is a tuple of ints/None)."""
    if not isinstance(shapes, (list, tuple)) or len(shapes) != count:
        return None
    if any(not isinstance(s, (list, tuple)) for s in shapes):
        return None
    return [tuple(s) for s in shapes]
