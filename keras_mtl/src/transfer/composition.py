"""Composition blocks: several adapters active at once (AdapterHub's).

`set_active_adapter(backbone, Stack("a", "b"))` makes every adapter
wrapper run a composition instead of one task's adapter:

- `Stack(c_1, ..., c_n)`: each block reads what the previous one produced,
  `h_k = h_{k-1} + delta_k(h_{k-1})` (bottleneck adapters, (IA)^3); beside a
  projection (LoRA, parallel adapters) the deltas, which read the same
  input, add up; prefixes concatenate.
- `BatchSplit(c_1, ..., c_n, batch_sizes=[b_1, ..., b_n])`: rows
  `b_1 + ... + b_{k-1}` to `b_1 + ... + b_k` of the batch go through
  block `k`; the sizes must add up to the batch.
- `Parallel(c_1, ..., c_n)`: `n` equal row groups, one per block: feed the
  backbone `replicate_batch(inputs, n)` and `split_batch(outputs, n)`
  gives one output per block (AdapterHub copies the batch at the first
  adapter layer instead, which computes the same).

Allowed nestings: `Stack` of names, `BatchSplit`s and `Parallel`s;
`BatchSplit` and `Parallel` of names and `Stack`s. The names are task
adapters or combinations of `add_combiner` (`"average"`, AdapterFusion,
ScaLearn: AdapterHub's `Average` and `Fuse`). Prompt tuning takes no
composition. Anything else is refused with a `ValueError`.
"""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export


class Composition:
    """Base class of the composition blocks."""

    allowed = ()

    def __init__(self, *children):
        if len(children) < 1:
            raise ValueError(
                f"`{type(self).__name__}` needs at least one child. "
                f"Received: children={children!r}")
        for child in children:
            if isinstance(child, str):
                continue
            if not isinstance(child, self.allowed):
                names = ["str"] + [c.__name__ for c in self.allowed]
                raise ValueError(
                    f"`{type(self).__name__}` takes {names} as children. "
                    f"Received: {child!r}")
        self.children = tuple(children)

    def leaves(self):
        """The adapter and combination names used, in order."""
        names = []
        for child in self.children:
            for name in [child] if isinstance(child, str) else child.leaves():
                if name not in names:
                    names.append(name)
        return names

    def get_config(self):
        return {"children": [serialize(c) for c in self.children]}

    def __eq__(self, other):
        return (type(self) is type(other)
                and self.get_config() == other.get_config())

    def __repr__(self):
        inner = ", ".join(repr(c) for c in self.children)
        return f"{type(self).__name__}({inner})"


@keras_mtl_export("keras_mtl.transfer.Stack")
class Stack(Composition):
    """Adapters applied one after the other at every position.

    Args:
        *children: task or combination names, `BatchSplit`s or
            `Parallel`s.

    Example:

    >>> keras_mtl.transfer.Stack("lang_de", "task_ner").leaves()
    ['lang_de', 'task_ner']
    """


@keras_mtl_export("keras_mtl.transfer.BatchSplit")
class BatchSplit(Composition):
    """Row groups of the batch, each through its own adapter.

    Args:
        *children: task or combination names, or `Stack`s.
        batch_sizes: one positive int per child, adding up to the batch.

    Example:

    >>> split = keras_mtl.transfer.BatchSplit("a", "b", batch_sizes=[2, 3])
    >>> split.batch_sizes
    [2, 3]
    """

    def __init__(self, *children, batch_sizes):
        super().__init__(*children)
        if (
            not isinstance(batch_sizes, (list, tuple))
            or len(batch_sizes) != len(children)
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                   for b in batch_sizes)
        ):
            raise ValueError(
                "`batch_sizes` must be one positive int per child "
                f"({len(children)}). Received: batch_sizes={batch_sizes!r}")
        self.batch_sizes = list(batch_sizes)

    def get_config(self):
        return {**super().get_config(), "batch_sizes": self.batch_sizes}

    def __repr__(self):
        inner = ", ".join(repr(c) for c in self.children)
        return f"BatchSplit({inner}, batch_sizes={self.batch_sizes})"


@keras_mtl_export("keras_mtl.transfer.Parallel")
class Parallel(Composition):
    """`n` equal row groups of the batch, one per adapter: with the inputs
    replicated `n` times, one output per adapter.

    Args:
        *children: task or combination names, or `Stack`s.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(backbone, ["a", "b"])
    >>> _ = keras_mtl.transfer.set_active_adapter(
    ...     backbone, keras_mtl.transfer.Parallel("a", "b"))
    >>> inputs = {"token_ids": np.ones((3, 8), "int32"),
    ...           "segment_ids": np.zeros((3, 8), "int32"),
    ...           "padding_mask": np.ones((3, 8), "int32")}
    >>> outputs = backbone(keras_mtl.transfer.replicate_batch(inputs, 2))
    >>> out_a, out_b = keras_mtl.transfer.split_batch(
    ...     outputs["pooled_output"], 2)
    >>> tuple(out_a.shape)
    (3, 16)
    """


Stack.allowed = (BatchSplit, Parallel)
BatchSplit.allowed = (Stack,)
Parallel.allowed = (Stack,)
CLASSES = {c.__name__: c for c in (Stack, BatchSplit, Parallel)}


def serialize(active):
    """A name, `None` or a composition as plain Python types."""
    if active is None or isinstance(active, str):
        return active
    return {"class_name": type(active).__name__,
            "config": active.get_config()}


def deserialize(item):
    """The inverse of `serialize`."""
    if item is None or isinstance(item, str):
        return item
    cls = CLASSES.get(item.get("class_name") if isinstance(item, dict)
                      else None)
    if cls is None:
        raise ValueError(f"Not a serialised composition: {item!r}")
    config = dict(item["config"])
    children = [deserialize(c) for c in config.pop("children")]
    return cls(*children, **config)


def leaves(active):
    """The names an active setting uses (none for `None`)."""
    if active is None:
        return []
    return [active] if isinstance(active, str) else active.leaves()


def _groups(block, h):
    """`h` split into the row groups of a `BatchSplit` or `Parallel`."""
    count = len(block.children)
    batch = h.shape[0]
    if isinstance(block, Parallel):
        if batch is not None and batch % count:
            raise ValueError(
                f"{block!r} needs a batch that {count} divides (replicate "
                f"the inputs with `replicate_batch`). Received: batch size "
                f"{batch}")
        return ops.split(h, count, axis=0)
    if batch is not None and batch != sum(block.batch_sizes):
        raise ValueError(
            f"The batch sizes {block.batch_sizes} of {block!r} do not add up "
            f"to the batch size {batch}.")
    cuts, total = [], 0
    for size in block.batch_sizes[:-1]:
        total += size
        cuts.append(total)
    return ops.split(h, cuts, axis=0)


def compose(active, h, unit, mode):
    """The delta of the active composition at one wrapper.

    `unit(name, h)` is the delta of one task adapter or combination;
    `mode` is `"sequential"` (each stage reads the previous stage's
    output), `"additive"` (each reads `h`) or `"concatenate"` (prefixes,
    joined along the sequence axis)."""
    if isinstance(active, str):
        return unit(active, h)
    if isinstance(active, Stack):
        deltas, current = [], h
        for child in active.children:
            delta = compose(child, current, unit, mode)
            deltas.append(delta)
            if mode == "sequential":
                current = current + delta
        if mode == "concatenate":
            return ops.concatenate(deltas, axis=1)
        return current - h if mode == "sequential" else sum(deltas[1:],
                                                            deltas[0])
    parts = [compose(child, rows, unit, mode)
             for child, rows in zip(active.children, _groups(active, h))]
    return ops.concatenate(parts, axis=0)


def prefix_length(active, lengths):
    """The number of prefix positions of `active`; `lengths` maps task
    names to their adapters' prefix lengths."""
    if active is None:
        return 0
    if isinstance(active, str):
        return lengths[active]
    sizes = [prefix_length(child, lengths) for child in active.children]
    if isinstance(active, Stack):
        return sum(sizes)
    if len(set(sizes)) != 1:
        raise ValueError(
            f"The row groups of {active!r} would have prefixes of lengths "
            f"{sizes}; they must be equal.")
    return sizes[0]


@keras_mtl_export("keras_mtl.transfer.replicate_batch")
def replicate_batch(inputs, count):
    """`count` copies of every tensor of `inputs`, along the batch axis.

    For `Parallel` compositions: the backbone then computes one output per
    adapter on the same examples; `split_batch` separates them. Works on
    arrays, tensors and symbolic Keras inputs (functional models), and on
    nested structures (e.g. keras-hub's input dicts).

    Args:
        inputs: a tensor or a nested structure of tensors.
        count: positive int.

    Returns:
        The same structure, each tensor `count` times longer.

    Example:

    >>> x = keras_mtl.transfer.replicate_batch(np.ones((2, 3)), 3)
    >>> tuple(x.shape)
    (6, 3)
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(
            f"`count` must be a positive int. Received: count={count!r}")
    return keras.tree.map_structure(
        lambda x: ops.concatenate([x] * count, axis=0), inputs)


@keras_mtl_export("keras_mtl.transfer.split_batch")
def split_batch(outputs, count):
    """Splits every tensor of `outputs` into `count` equal row groups.

    Args:
        outputs: a tensor or a nested structure of tensors.
        count: positive int dividing the batch size.

    Returns:
        A list of `count` structures like `outputs`.

    Example:

    >>> a, b = keras_mtl.transfer.split_batch(np.arange(4.0), 2)
    >>> keras.ops.convert_to_numpy(b).tolist()
    [2.0, 3.0]
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(
            f"`count` must be a positive int. Received: count={count!r}")
    flat = keras.tree.flatten(outputs)
    for x in flat:
        if x.shape[0] is not None and x.shape[0] % count:
            raise ValueError(
                f"A batch of {x.shape[0]} rows does not split into {count} "
                "equal groups.")
    pieces = [ops.split(x, count, axis=0) for x in flat]
    return [keras.tree.pack_sequence_as(outputs, [p[k] for p in pieces])
            for k in range(count)]
