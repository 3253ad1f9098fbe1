"""The layers a wrapper needs elsewhere in its block (private).

A `"tap"` wrapper's delta is added at the end of its sub-layer
(`tapped_delta`); a `"prefix"` wrapper on the key projection needs the
attention mask extended (`prefix_attention`). `add_adapters`,
`restore_transfer` and `merge_adapter` insert and remove them here.
"""

from keras_mtl.src.transfer import prefix_attention
from keras_mtl.src.transfer import tapped_delta


def check(encoder, slot, placement):
    """Raises unless the companion of a new wrapper at `slot` can go in."""
    if placement == "tap":
        tapped_delta.check_output(encoder, slot)


def attach(encoder, slot, wrapper):
    """Inserts the companion of `wrapper`, newly put at `slot`, if any."""
    if wrapper.placement == "tap":
        tapped_delta.attach(encoder, slot, wrapper)
    elif prefix_attention.is_prefix_key(slot, wrapper):
        prefix_attention.attach(encoder, wrapper)


def detach(encoder, slot, wrapper):
    """Removes the companion `attach` inserted for `wrapper` at `slot`."""
    if wrapper.placement == "tap":
        tapped_delta.detach(encoder, slot)
    elif prefix_attention.is_prefix_key(slot, wrapper):
        prefix_attention.detach(encoder)
