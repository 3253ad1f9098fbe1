"""`save_adapter` / `load_adapter`: one task's adapter in a small file."""

import json
import os

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.add_adapters import add_adapters
from keras_mtl.src.transfer.add_adapters import existing_config
from keras_mtl.src.transfer.add_adapters import positions as placements

FORMAT = "keras_mtl.adapter"
FORMAT_VERSION = 1
META_KEY = "__meta__"


def _array_key(position, index):
    return f"position_{position}_weight_{index}"


def _describe(num_encoders, dim, bottleneck):
    return (
        f"{num_encoders} encoder layers of hidden size {dim} "
        f"(bottleneck {bottleneck})"
    )


@keras_mtl_export("keras_mtl.transfer.save_adapter")
def save_adapter(backbone, task_name, path):
    """Saves the adapter weights of one task, alone, to a small file.

    The file (NumPy `.npz` format, written to `path` as given) holds the
    adapter weights of `task_name` at every adapter position, plus a JSON
    description (configuration, hidden size, bottleneck, number of layers)
    that `load_adapter` checks. The backbone's own weights are not saved.

    Args:
        backbone: a model prepared with `add_adapters`.
        task_name: a task of `add_adapters`.
        path: file path (str or path-like), e.g. `"sst2.adapter.npz"`.

    Returns:
        None.

    Example:

    >>> import os, tempfile, keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> _ = keras_mtl.transfer.add_adapters(backbone, ["sst2"])
    >>> path = os.path.join(tempfile.mkdtemp(), "sst2.adapter.npz")
    >>> keras_mtl.transfer.save_adapter(backbone, "sst2", path)
    """
    found = backbone_walk.wrappers_or_raise(backbone)
    backbone_walk.check_known(found, task_name, "task_name", ("adapters",))
    adapters = [wrapper.adapters[task_name] for _, _, wrapper in found]
    first = adapters[0]
    adapter_config = first.get_config()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task_name": task_name,
        "config": existing_config(found),
        "reduction_factor": adapter_config["reduction_factor"],
        "hidden_units": adapter_config["hidden_units"],
        "activation": adapter_config["activation"],
        "num_encoders": len(backbone_walk.transformer_encoders(backbone)),
        "hidden_dim": int(first.down_kernel.shape[0]),
        "bottleneck": int(first.down_kernel.shape[-1]),
        "positions": [[index, position] for index, position, _ in found],
        "shapes": [[list(w.shape) for w in a.weights] for a in adapters],
    }
    arrays = {META_KEY: np.array(json.dumps(meta))}
    for i, adapter in enumerate(adapters):
        for j, weight in enumerate(adapter.weights):
            arrays[_array_key(i, j)] = keras.ops.convert_to_numpy(weight)
    with open(os.fspath(path), "wb") as file:
        np.savez(file, **arrays)


def _read(path):
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if META_KEY not in data:
            raise ValueError(
                f"{path!r} is not a keras_mtl adapter file (no metadata). "
                f"Received: path={path!r}"
            )
        meta = json.loads(str(data[META_KEY]))
        arrays = {k: data[k] for k in data.files if k != META_KEY}
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not a keras_mtl adapter file. Received: "
            f"path={path!r}"
        )
    return meta, arrays


def _check_layout(meta, positions, path):
    if positions != meta["positions"]:
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds adapters at "
            f"{len(meta['positions'])} positions {meta['positions']}, but "
            f"the backbone's {meta['config']!r} adapters sit at "
            f"{len(positions)} positions {positions}. Received: "
            f"path={path!r}"
        )


@keras_mtl_export("keras_mtl.transfer.load_adapter")
def load_adapter(backbone, task_name, path):
    """Loads one task's adapter weights saved by `save_adapter`.

    If `backbone` has no adapter for `task_name` yet, it is first added with
    the configuration recorded in the file, as
    `add_adapters(backbone, [task_name], ...)` would (which freezes the
    backbone's own weights). The file may have been saved under another task
    name. The adapter sizes are checked first: loading into a backbone with
    another hidden size, number of layers, adapter placement or bottleneck
    raises a `ValueError` and leaves the backbone unchanged.

    This is also how a saved model gets its adapters back: a backbone
    restored from a `.keras` file or a keras-hub preset is rebuilt from its
    configuration, which knows nothing of adapters, so re-inject them with
    `load_adapter` (or `add_adapters` followed by `load_adapter`).

    Args:
        backbone: a built model containing keras-hub `TransformerEncoder`s.
        task_name: the task to load the weights into.
        path: a file written by `save_adapter`.

    Returns:
        `backbone`, modified in place.

    Example:

    >>> import os, tempfile, keras_hub
    >>> def tiny_bert():
    ...     return keras_hub.models.BertBackbone(
    ...         vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...         intermediate_dim=32, max_sequence_length=8)
    >>> trained = keras_mtl.transfer.add_adapters(tiny_bert(), ["sst2"])
    >>> path = os.path.join(tempfile.mkdtemp(), "sst2.adapter.npz")
    >>> keras_mtl.transfer.save_adapter(trained, "sst2", path)
    >>> fresh = keras_mtl.transfer.load_adapter(tiny_bert(), "sst2", path)
    """
    meta, arrays = _read(path)
    encoders = backbone_walk.transformer_encoders(backbone)
    dim = backbone_walk.hidden_dim(encoders[0])
    if meta["hidden_dim"] != dim or meta["num_encoders"] != len(encoders):
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds an adapter for "
            + _describe(
                meta["num_encoders"], meta["hidden_dim"], meta["bottleneck"]
            )
            + f", but the backbone has {len(encoders)} encoder layers of "
            f"hidden size {dim}. Received: path={path!r}"
        )
    found = backbone_walk.wrappers(backbone)
    if found and task_name in found[0][2].combiners:
        raise ValueError(
            f"{task_name!r} is a combination, not a task adapter. "
            f"Received: task_name={task_name!r}"
        )
    if found and existing_config(found) != meta["config"]:
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds a "
            f"{meta['config']!r} adapter, but the backbone has "
            f"{existing_config(found)!r} adapters. Received: path={path!r}"
        )
    if not found or task_name not in found[0][2].adapters:
        expected = [
            [index, attribute]
            for index, encoder in enumerate(encoders)
            for attribute, _ in placements(meta["config"], encoder)
        ]
        _check_layout(meta, expected, path)
        add_adapters(
            backbone,
            [task_name],
            config=meta["config"],
            reduction_factor=meta["reduction_factor"],
            activation=meta["activation"],
            hidden_units=meta["hidden_units"],
        )
        found = backbone_walk.wrappers(backbone)
    _check_layout(meta, [[i, p] for i, p, _ in found], path)
    adapters = [wrapper.adapters[task_name] for _, _, wrapper in found]
    shapes = [[list(w.shape) for w in a.weights] for a in adapters]
    if shapes != meta["shapes"]:
        bottleneck = int(adapters[0].down_kernel.shape[-1])
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds an adapter for "
            + _describe(
                meta["num_encoders"], meta["hidden_dim"], meta["bottleneck"]
            )
            + f", but the backbone's {task_name!r} adapter is for "
            + _describe(len(encoders), dim, bottleneck)
            + f". Received: path={path!r}"
        )
    for i, adapter in enumerate(adapters):
        for j, weight in enumerate(adapter.weights):
            weight.assign(arrays[_array_key(i, j)])
    return backbone
