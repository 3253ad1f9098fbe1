"""`save_adapter` / `load_adapter`: one task's adapter in a small file."""

import json
import os
import zipfile
import zlib

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.transfer import backbone_walk
from keras_mtl.src.transfer.adapter_configs import BottleneckConfig
from keras_mtl.src.transfer.adapter_configs import deserialize_config
from keras_mtl.src.transfer.adapter_configs import serialize_config
from keras_mtl.src.transfer.adapter_wrapper import check_name
from keras_mtl.src.transfer.add_adapters import add_adapters
from keras_mtl.src.transfer.add_adapters import config_of
from keras_mtl.src.transfer.add_adapters import existing_config
from keras_mtl.src.transfer.add_adapters import probe_adapters
from keras_mtl.src.utils.atomic_files import atomic_write

FORMAT = "keras_mtl.adapter"
# Version 3 stores a variable that several adapters share (Compacter's
# rules, prefix-tuning MLPs, hyper-networks) once, with "aliases" naming
# the other places it goes. Version 2 records the adapter config (any
# kind); version 1 files hold bottleneck adapters described by
# `reduction_factor`, `activation` and `hidden_units`. All still load.
FORMAT_VERSION = 3
META_KEY = "__meta__"


def _array_key(position, index):
    return f"position_{position}_weight_{index}"


def _describe(num_encoders, dim, config, shapes):
    """Sizes for messages: a bottleneck's width or LoRA's rank is the last
    dimension of the adapter's first weight."""
    width = {"lora": "rank"}.get(config, "bottleneck")
    size = (
        f" ({width} {shapes[0][0][-1]})"
        if config != "ia3" and shapes and shapes[0]
        else ""
    )
    return f"{num_encoders} encoder layers of hidden size {dim}{size}"


def _to_numpy(weight):
    array = keras.ops.convert_to_numpy(weight)
    if array.dtype.kind != "f":
        # bfloat16 & co. would come back from `.npz` as raw bytes ("V2").
        array = array.astype("float32")
    return array


@keras_mtl_export("keras_mtl.transfer.save_adapter")
def save_adapter(backbone, task_name, path):
    """Saves the adapter weights of one task, alone, to a small file.

    The file (NumPy `.npz` format, written to `path` as given) holds the
    adapter weights of `task_name` at every adapter position, plus a JSON
    description (configuration, hidden size, bottleneck, number of layers)
    that `load_adapter` checks. The backbone's own weights are not saved.

    The write is atomic: the file is written to a temporary file in the
    same folder, synced to disk, then moved onto `path`. If saving fails,
    any existing file at `path` is left as it was.

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
    encoders = backbone_walk.transformer_encoders(backbone)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task_name": task_name,
        "config": existing_config(found),
        "adapter_config": serialize_config(config_of(found, task_name)),
        "num_encoders": len(encoders),
        "hidden_dim": backbone_walk.hidden_dim(encoders[0]),
        "positions": [[index, position] for index, position, _ in found],
        "shapes": [[list(w.shape) for w in a.weights] for a in adapters],
    }
    arrays, first, aliases = {}, {}, {}
    for i, adapter in enumerate(adapters):
        for j, weight in enumerate(adapter.weights):
            key = _array_key(i, j)
            if id(weight) in first:
                aliases[key] = first[id(weight)]
            else:
                first[id(weight)] = key
                arrays[key] = _to_numpy(weight)
    meta["aliases"] = aliases
    arrays[META_KEY] = np.array(json.dumps(meta))
    # Through a file object: `np.savez` would add ".npz" to a bare name.
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def _load_npz(path):
    """Every array of the `.npz` file at `path`; `ValueError` if unreadable."""
    with open(os.fspath(path), "rb") as handle:
        try:
            if not zipfile.is_zipfile(handle):
                raise ValueError("not a ZIP archive")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            for key, value in arrays.items():
                if not isinstance(value, np.ndarray):
                    raise ValueError(f"member {key!r} is not a NumPy array")
            return arrays
        except (
            OSError,
            ValueError,
            EOFError,
            KeyError,
            zipfile.BadZipFile,
            zlib.error,
        ) as error:
            raise ValueError(
                f"Could not read {os.fspath(path)!r}: it is not a valid "
                f"NumPy `.npz` file, or it is truncated or damaged "
                f"({error}). Received: path={path!r}"
            ) from error


def _invalid_meta(path, problem):
    return ValueError(
        f"The adapter file {os.fspath(path)!r} has invalid metadata: "
        f"{problem}. Received: path={path!r}"
    )


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_shape(value):
    return isinstance(value, list) and all(_is_int(d) for d in value)


def _check_meta(meta, path):
    version = meta.get("format_version")
    if not _is_int(version) or version > FORMAT_VERSION:
        raise _invalid_meta(
            path,
            f"format_version {version!r} (this keras_mtl reads version "
            f"{FORMAT_VERSION} and below)",
        )
    legacy = ("reduction_factor", "hidden_units", "activation")
    required = ("config", "num_encoders", "hidden_dim", "positions",
                "shapes") + (legacy if version < 2 else ("adapter_config",))
    missing = [key for key in required if key not in meta]
    if missing:
        raise _invalid_meta(path, f"missing entries {missing}")
    for key in ("num_encoders", "hidden_dim"):
        if not _is_int(meta[key]):
            raise _invalid_meta(path, f"{key}={meta[key]!r}")
    positions = meta["positions"]
    if not isinstance(positions, list) or not all(
        isinstance(p, list)
        and len(p) == 2
        and _is_int(p[0])
        and isinstance(p[1], str)
        for p in positions
    ):
        raise _invalid_meta(path, f"positions={positions!r}")
    shapes = meta["shapes"]
    if not isinstance(shapes, list) or not all(
        isinstance(s, list) and all(_is_shape(d) for d in s) for s in shapes
    ):
        raise _invalid_meta(path, f"shapes={shapes!r}")
    aliases = meta.setdefault("aliases", {})
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v not in aliases
        for k, v in aliases.items()
    ):
        raise _invalid_meta(path, f"aliases={aliases!r}")


def _read(path):
    """`(meta, arrays)` of an adapter file; `ValueError` if it is not one."""
    data = _load_npz(path)
    meta = data.pop(META_KEY, None)
    if meta is None:
        raise ValueError(
            f"{path!r} is not a keras_mtl adapter file (no metadata). "
            f"Received: path={path!r}"
        )
    try:
        if meta.dtype.kind != "U" or meta.shape != ():
            raise ValueError(f"a {meta.dtype} array of shape {meta.shape}")
        meta = json.loads(str(meta))
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except ValueError as error:
        raise _invalid_meta(path, error) from error
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not a keras_mtl adapter file. Received: "
            f"path={path!r}"
        )
    _check_meta(meta, path)
    for key, target in meta["aliases"].items():
        if key in data or target not in data:
            raise _invalid_meta(path, f"alias {key!r} -> {target!r}")
        data[key] = data[target]
    return meta, data


def _check_layout(meta, positions, path):
    if positions != meta["positions"]:
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds adapters at "
            f"{len(meta['positions'])} positions {meta['positions']}, but "
            f"the backbone's {meta['config']!r} adapters sit at "
            f"{len(positions)} positions {positions}. Received: "
            f"path={path!r}"
        )


def _adapter_config(meta, path):
    """The `AdapterConfig` a file's adapters were made with."""
    try:
        if meta["format_version"] < 2:
            return BottleneckConfig(meta["config"], meta["reduction_factor"],
                                    meta["activation"], meta["hidden_units"])
        return deserialize_config(meta["adapter_config"])
    except (ValueError, TypeError) as error:
        raise _invalid_meta(path, f"adapter arguments ({error})") from error


def _new_adapter_targets(config, encoders):
    """`(positions, shapes, dtypes)` of the adapters that `add_adapters`
    would add with `config` (made and built on the side, not attached)."""
    positions, shapes, dtypes = [], [], []
    for index, slot, adapter in probe_adapters(config, encoders):
        positions.append([index, slot])
        shapes.append([list(w.shape) for w in adapter.weights])
        dtypes.append([w.dtype for w in adapter.weights])
    return positions, shapes, dtypes


def _plan(backbone, task_name, meta, path):
    """Checks the file's description against `backbone`, changing nothing.

    Returns `(add, shapes, dtypes)`: whether the adapters of `task_name`
    must be added first, and the shape and dtype of every target variable.
    """
    check_name(task_name, "task_name")
    config = _adapter_config(meta, path)
    encoders = backbone_walk.transformer_encoders(backbone)
    dim = backbone_walk.hidden_dim(encoders[0])
    saved = _describe(meta["num_encoders"], meta["hidden_dim"],
                      config.name, meta["shapes"])
    if meta["hidden_dim"] != dim or meta["num_encoders"] != len(encoders):
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds an adapter for "
            + saved
            + f", but the backbone has {len(encoders)} encoder layers of "
            f"hidden size {dim}. Received: path={path!r}"
        )
    found = backbone_walk.wrappers(backbone)
    if found and task_name in found[0][2].combiners:
        raise ValueError(
            f"{task_name!r} is a combination, not a task adapter. "
            f"Received: task_name={task_name!r}"
        )
    if found and existing_config(found) != config.name:
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds a "
            f"{config.name!r} adapter, but the backbone has "
            f"{existing_config(found)!r} adapters. Received: path={path!r}"
        )
    others = [n for n in (found[0][2].adapters if found else ())
              if n != task_name]
    if others and config.shared_across_tasks:
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds {config.name!r} "
            f"adapters, whose generator the backbone's other tasks "
            f"{others} share: loading it would change them. Load it into a "
            f"backbone without other tasks. Received: path={path!r}"
        )
    add = not found or task_name not in found[0][2].adapters
    if add:
        positions, shapes, dtypes = _new_adapter_targets(config, encoders)
        if found:
            _check_layout(meta, [[i, p] for i, p, _ in found], path)
    else:
        adapters = [wrapper.adapters[task_name] for _, _, wrapper in found]
        positions = [[i, p] for i, p, _ in found]
        shapes = [[list(w.shape) for w in a.weights] for a in adapters]
        dtypes = [[w.dtype for w in a.weights] for a in adapters]
    _check_layout(meta, positions, path)
    if shapes != meta["shapes"]:
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} holds an adapter for "
            + saved
            + f", but the backbone's {task_name!r} adapter "
            + ("would be" if add else "is")
            + " for "
            + _describe(len(encoders), dim, config.name, shapes)
            + f". Received: path={path!r}"
        )
    return add, config, shapes, dtypes


def _check_arrays(arrays, shapes, dtypes, path):
    """Every expected array present, of the right shape and a float dtype."""
    expected = {}
    for i, (position_shapes, position_dtypes) in enumerate(
        zip(shapes, dtypes)
    ):
        for j, (shape, dtype) in enumerate(
            zip(position_shapes, position_dtypes)
        ):
            expected[_array_key(i, j)] = (tuple(shape), dtype)
    missing = [key for key in expected if key not in arrays]
    extra = sorted(key for key in arrays if key not in expected)
    mismatched = []
    for key, (shape, dtype) in expected.items():
        if key not in arrays:
            continue
        array = arrays[key]
        compatible = array.dtype.kind == "f" and array.dtype.itemsize <= 8
        if array.shape != shape or not compatible:
            mismatched.append(
                f"{key} (expected shape {shape} of {dtype}, received "
                f"shape {array.shape} of {array.dtype})"
            )
    if missing or extra or mismatched:
        problems = []
        if missing:
            problems.append(f"missing arrays {missing}")
        if mismatched:
            problems.append("mismatched arrays " + ", ".join(mismatched))
        if extra:
            problems.append(f"unexpected arrays {extra}")
        raise ValueError(
            f"The adapter file {os.fspath(path)!r} is incomplete or "
            f"inconsistent: " + "; ".join(problems) + ". Nothing was "
            f"loaded. Received: path={path!r}"
        )


@keras_mtl_export("keras_mtl.transfer.load_adapter")
def load_adapter(backbone, task_name, path):
    """Loads one task's adapter weights saved by `save_adapter`.

    If `backbone` has no adapter for `task_name` yet, it is first added with
    the configuration recorded in the file, as
    `add_adapters(backbone, [task_name], ...)` would (which freezes the
    backbone's own weights). The file may have been saved under another task
    name.

    Loading is all or nothing: the whole file is read and checked before
    `backbone` is touched. A file that cannot be read (truncated, damaged,
    not an adapter file), that is for another hidden size, number of layers,
    adapter placement or bottleneck, or whose arrays are missing, extra, or
    of the wrong shape or dtype raises a `ValueError` naming the file and
    the arrays concerned, and leaves the backbone unchanged (no adapter
    added, no weight or `trainable` flag changed).

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
    add, config, shapes, dtypes = _plan(backbone, task_name, meta, path)
    _check_arrays(arrays, shapes, dtypes, path)
    # Everything is checked: only now is the backbone changed.
    if add:
        add_adapters(backbone, [task_name], config=config)
    found = backbone_walk.wrappers(backbone)
    adapters = [wrapper.adapters[task_name] for _, _, wrapper in found]
    for i, adapter in enumerate(adapters):
        for j, weight in enumerate(adapter.weights):
            weight.assign(arrays[_array_key(i, j)])
    return backbone
