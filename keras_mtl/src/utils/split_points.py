"""Where consecutive pieces of given sizes start, for `ops.split`."""

import itertools


def split_points(sizes):
    """The split points of consecutive pieces of `sizes` (all but the
    first piece's start): `[3, 2, 4]` gives `[3, 5]`."""
    return list(itertools.accumulate(sizes))[:-1]
