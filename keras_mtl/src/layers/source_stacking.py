"""Stacking the outputs of N source adapters for the combiners.

Every combiner takes `adapter_outputs` either as a list of N tensors of
identical shape `(..., d)` or as one tensor of shape `(..., N, d)`.
"""

from keras import ops


def is_list_of_shapes(shape):
    return (
        isinstance(shape, (list, tuple))
        and len(shape) > 0
        and isinstance(shape[0], (list, tuple))
    )


def stacked_shape(adapter_outputs_shape):
    """The shape `(..., N, d)` of the stacked sources, checked."""
    if is_list_of_shapes(adapter_outputs_shape):
        shapes = [tuple(s) for s in adapter_outputs_shape]
        first = shapes[0]
        for shape in shapes[1:]:
            if len(shape) != len(first) or any(
                a is not None and b is not None and a != b
                for a, b in zip(shape, first)
            ):
                raise ValueError(
                    "All `adapter_outputs` must have the same shape. "
                    f"Received: adapter_outputs shapes={shapes}"
                )
        if not first:
            raise ValueError(
                "`adapter_outputs` must have at least one dimension. "
                f"Received: adapter_outputs shapes={shapes}"
            )
        return first[:-1] + (len(shapes), first[-1])
    shape = tuple(adapter_outputs_shape)
    if len(shape) < 2:
        raise ValueError(
            "A stacked `adapter_outputs` tensor must have shape (..., N, d). "
            f"Received: adapter_outputs shape={shape}"
        )
    return shape


def stack_sources(adapter_outputs):
    """`(..., N, d)` from a list of N `(..., d)` tensors or a stacked one."""
    if isinstance(adapter_outputs, (list, tuple)):
        if not adapter_outputs:
            raise ValueError(
                "`adapter_outputs` must hold at least one tensor. "
                f"Received: adapter_outputs={adapter_outputs!r}"
            )
        return ops.stack(list(adapter_outputs), axis=-2)
    return adapter_outputs
