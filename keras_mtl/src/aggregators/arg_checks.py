"""Validation of the constructor arguments of the aggregators.

Each check raises a `ValueError` naming the argument and the value received,
and returns the value converted to the type the rule stores.
"""

import math
import numbers

from keras import ops


def check_finite(name, value, minimum=0.0, inclusive=False):
    """`value` as a float: a finite real number above `minimum` (or equal
    to it with `inclusive`); booleans and other types are refused."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value)
          and (value >= minimum if inclusive else value > minimum))
    if not ok:
        bound = ">=" if inclusive else ">"
        raise ValueError(f"`{name}` must be a finite number {bound} "
                         f"{minimum:g}. Received: {name}={value!r}")
    return float(value)


def check_positive(name, value):
    """`value` as a float, which must be > 0."""
    if not float(value) > 0.0:
        raise ValueError(f"`{name}` must be > 0. Received: {name}={value}")
    return float(value)


def check_non_negative(name, value):
    """`value` as a float, which must be >= 0."""
    if not float(value) >= 0.0:
        raise ValueError(f"`{name}` must be >= 0. Received: {name}={value}")
    return float(value)


def check_fraction(name, value, include_one=True):
    """`value` as a float in `[0, 1]`, or in `[0, 1)` without `include_one`."""
    below_one = float(value) <= 1.0 if include_one else float(value) < 1.0
    if not (0.0 <= float(value) and below_one):
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(
            f"`{name}` must be in {interval}. Received: {name}={value}"
        )
    return float(value)


def check_count(name, value, minimum=1):
    """`value` as an int, which must be >= `minimum`."""
    if int(value) < minimum:
        raise ValueError(
            f"`{name}` must be >= {minimum}. Received: {name}={value}"
        )
    return int(value)


def check_choice(name, value, choices):
    """`value`, which must be one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )
    return value


def check_preference(value):
    """A preference vector as a list of floats >= 0, or None."""
    if value is None:
        return None
    preference = [float(v) for v in value]
    if not preference or min(preference) < 0.0:
        raise ValueError(
            "`preference` must be a non-empty list of values >= 0. "
            f"Received: preference={value}")
    return preference


def preference_for(preference, num_tasks):
    """A stored preference (see `check_preference`) as a float32 tensor for
    `num_tasks` tasks, or None; raises if its length differs."""
    if preference is None:
        return None
    if len(preference) != num_tasks:
        raise ValueError(
            f"`preference` has {len(preference)} entries for {num_tasks} "
            f"tasks. Received: preference={preference}")
    return ops.convert_to_tensor(preference, "float32")
