"""Consecutive pieces of given sizes along one axis of a tensor."""


def split_sizes(x, sizes, axis=0):
    """`x` cut along `axis` into consecutive pieces of `sizes` (Python
    ints summing to the axis' length), as slices.

    Not `ops.split(x, points)`: Keras' PyTorch `split` turns the points into
    a tensor and reads them back on the host, a sync per call and a break in
    a `torch.compile` graph.
    """
    axis = axis % len(x.shape)
    lead = (slice(None),) * axis
    pieces, start = [], 0
    for size in sizes:
        pieces.append(x[lead + (slice(start, start + size),)])
        start += size
    return pieces
