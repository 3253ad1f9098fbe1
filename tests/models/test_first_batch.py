"""`peek`/`peek_validation`: first-batch specs for every input kind of `fit`,
and data passed on that still yields every batch exactly once."""

import ast
import inspect
import os
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest
from keras import ops

from keras_mtl.src.models import first_batch
from keras_mtl.src.models.first_batch import EMPTY
from keras_mtl.src.models.first_batch import peek
from keras_mtl.src.models.first_batch import peek_validation

BACKENDS = ("tensorflow", "torch", "jax")


def make_arrays(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = {
        "reg": rng.normal(size=(n, 1)).astype("float32"),
        "cls": rng.integers(0, 3, size=(n,)).astype("int32"),
    }
    sw = {"reg": rng.random(n).astype("float32"), "cls": np.ones(n, "float32")}
    return x, y, sw


def make_batches(num=3, size=4):
    """A list of `(x, y, sw)` batches of `size` rows."""
    x, y, sw = make_arrays(num * size)
    out = []
    for i in range(num):
        s = slice(i * size, (i + 1) * size)
        out.append(
            (
                x[s],
                {k: v[s] for k, v in y.items()},
                {k: v[s] for k, v in sw.items()},
            )
        )
    return out


def describe(spec):
    """Nested structure of `(shape, dtype)` pairs, `None` kept."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return {k: describe(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [describe(v) for v in spec]
    if isinstance(spec, tuple):
        return tuple(describe(v) for v in spec)
    assert isinstance(spec, keras.KerasTensor), type(spec)
    assert isinstance(spec.shape, tuple)
    assert isinstance(spec.dtype, str)
    return (spec.shape, spec.dtype)


def to_numpy(structure):
    return keras.tree.map_structure(
        lambda t: t.numpy() if hasattr(t, "numpy") else np.asarray(t),
        structure,
    )


def assert_same_batches(actual, expected):
    """Same number of batches, same structure, equal leaves, in order."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        got = to_numpy(got)
        keras.tree.assert_same_structure(got, want)
        for g, w in zip(keras.tree.flatten(got), keras.tree.flatten(want)):
            np.testing.assert_array_equal(g, w)


BATCH_SPEC = (
    ((4, 6), "float32"),
    {"reg": ((4, 1), "float32"), "cls": ((4,), "int32")},
    {"reg": ((4,), "float32"), "cls": ((4,), "float32")},
)


# In-memory arrays.


def test_numpy_arrays_keep_objects_and_give_sample_counts():
    x, y, sw = make_arrays()
    x2, y2, sw2, batch = peek(x, y, sw)
    assert x2 is x and y2 is y and sw2 is sw
    assert isinstance(batch, tuple) and len(batch) == 3
    assert describe(batch.x) == ((8, 6), "float32")
    assert describe(batch.y) == {
        "reg": ((8, 1), "float32"),
        "cls": ((8,), "int32"),
    }
    assert describe(batch[2]) == {
        "reg": ((8,), "float32"),
        "cls": ((8,), "float32"),
    }


def test_backend_tensors_lists_and_missing_parts():
    x, y, _ = make_arrays()
    xt = ops.convert_to_tensor(x)
    yl = [ops.convert_to_tensor(y["reg"]), y["cls"]]
    sw = ops.ones((8,), dtype="float16")
    x2, y2, sw2, batch = peek({"a": xt, "b": [xt]}, yl, sw)
    assert x2["a"] is xt and y2 is yl and sw2 is sw
    assert describe(batch) == (
        {"a": ((8, 6), "float32"), "b": [((8, 6), "float32")]},
        [((8, 1), "float32"), ((8,), "int32")],
        ((8,), "float16"),
    )
    *_, batch = peek(x)
    assert describe(batch) == (((8, 6), "float32"), None, None)
    *_, batch = peek(x, {"reg": y["reg"], "cls": None})
    assert describe(batch.y) == {"reg": ((8, 1), "float32"), "cls": None}


def test_sample_weights_for_some_tasks_are_completed_with_ones():
    x, y, sw = make_arrays()
    _, _, sw2, batch = peek(x, y, {"cls": sw["cls"]})
    assert sw2["cls"] is sw["cls"]
    np.testing.assert_array_equal(sw2["reg"], np.ones(8, "float32"))
    assert describe(batch.sample_weight)["reg"] == ((8,), "float32")
    _, _, sw2, _ = peek(x, y, {"nope": sw["cls"]})
    assert set(sw2) == {"nope", "reg", "cls"}  # Unknown keys stay.


def test_scalar_and_string_arrays():
    *_, batch = peek(np.array(["a", "b"]), np.float64(1.0))
    assert describe(batch.x) == ((2,), "string")
    assert describe(batch.y) == ((), "float64")


# tf.data.


def test_tf_dataset_uses_element_spec_without_iterating():
    tf = pytest.importorskip("tensorflow")
    x, y, sw = make_arrays()
    ds = tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(4)
    x2, y2, sw2, batch = peek(ds)
    assert x2 is ds and y2 is None and sw2 is None
    assert describe(batch) == (
        ((None, 6), "float32"),
        {"reg": ((None, 1), "float32"), "cls": ((None,), "int32")},
        {"reg": ((None,), "float32"), "cls": ((None,), "float32")},
    )
    assert_same_batches(list(x2), make_batches(2, 4))

    started = []

    def gen():
        started.append(1)
        yield from make_batches()

    signature = tuple(
        keras.tree.map_structure(
            lambda a: tf.TensorSpec((None, *a.shape[1:]), a.dtype), part
        )
        for part in make_batches()[0]
    )
    ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
    *_, batch = peek(ds)
    assert started == []
    assert describe(batch.y)["reg"] == ((None, 1), "float32")


def test_tf_dataset_single_tensor_and_dict_elements():
    tf = pytest.importorskip("tensorflow")
    x, y, _ = make_arrays()
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4, drop_remainder=True)
    *_, batch = peek(ds)
    assert describe(batch) == (((4, 6), "float32"), None, None)
    ds = tf.data.Dataset.from_tensor_slices(({"in": x}, y["cls"])).batch(4)
    *_, batch = peek(ds)
    assert describe(batch) == (
        {"in": ((None, 6), "float32")},
        ((None,), "int32"),
        None,
    )


def test_tf_dataset_unknown_label_dims_take_one_element():
    tf = pytest.importorskip("tensorflow")
    batches = make_batches()
    made = []

    def gen():
        made.append(1)
        yield from batches

    spec = (
        tf.TensorSpec((None, 6), tf.float32),
        {
            "reg": tf.TensorSpec((None, None), tf.float32),
            "cls": tf.TensorSpec(None, tf.int32),
        },
        {
            "reg": tf.TensorSpec((None,), tf.float32),
            "cls": tf.TensorSpec((None,), tf.float32),
        },
    )
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    ds2, _, _, batch = peek(ds)
    assert ds2 is ds
    assert describe(batch) == BATCH_SPEC
    assert_same_batches(list(ds2), batches)
    assert_same_batches(list(ds2), batches)


def test_tf_dataset_empty():
    tf = pytest.importorskip("tensorflow")
    x, y, _ = make_arrays()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).take(0)
    assert peek(ds) == (ds, None, None, EMPTY)
    unknown = tf.data.Dataset.from_generator(
        lambda: iter(()),
        output_signature=(
            tf.TensorSpec((None, 6), tf.float32),
            tf.TensorSpec((None, None), tf.float32),
        ),
    )
    assert peek(unknown) == (unknown, None, None, EMPTY)
    assert peek_validation(ds) == (ds, EMPTY)


# Python generators and iterators.


def test_generator_keeps_every_batch():
    batches = make_batches()
    gen = (b for b in batches)
    gen2, y2, sw2, batch = peek(gen)
    assert isinstance(gen2, types.GeneratorType)
    assert y2 is None and sw2 is None
    assert describe(batch) == BATCH_SPEC
    assert_same_batches(list(gen2), batches)
    assert list(gen) == []


def test_iterator_and_list_elements():
    batches = [[x, y] for x, y, _ in make_batches()]
    it2, _, _, batch = peek(iter(batches))
    assert describe(batch) == BATCH_SPEC[:2] + (None,)
    assert_same_batches(list(it2), batches)


def test_generator_of_inputs_only():
    batches = [b[0] for b in make_batches()]
    gen2, _, _, batch = peek(iter(batches))
    assert describe(batch) == (((4, 6), "float32"), None, None)
    assert_same_batches(list(gen2), batches)


def test_empty_generator_stays_exhausted():
    gen = (b for b in ())
    gen2, y2, sw2, batch = peek(gen)
    assert gen2 is gen and y2 is None and sw2 is None and batch is EMPTY
    with pytest.raises(StopIteration):
        next(gen2)


def test_fit_accepts_the_generator_passed_on():
    batches = [(x, y["reg"]) for x, y, _ in make_batches()]
    served = []

    def gen():
        for b in batches:
            served.append(b)
            yield b

    gen2, _, _, batch = peek(gen())
    assert describe(batch.y) == ((4, 1), "float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(
        gen2, epochs=1, steps_per_epoch=len(batches), shuffle=False, verbose=0
    )
    assert len(served) == len(batches)


# PyDataset / Sequence.


class Batches(keras.utils.PyDataset):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.calls = []

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        self.calls.append(index)
        return self.batches[index]


def test_py_dataset_reads_index_zero():
    batches = make_batches()
    data = Batches(batches)
    data2, _, _, batch = peek(data)
    assert data2 is data
    assert data.calls == [0]
    assert describe(batch) == BATCH_SPEC
    assert_same_batches([data2[i] for i in range(len(data2))], batches)


def test_sequence_alias_and_empty_py_dataset():
    class Seq(keras.utils.Sequence):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return np.zeros((2, 3), "float32"), np.zeros((2,), "int64")

    *_, batch = peek(Seq())
    assert describe(batch) == (((2, 3), "float32"), ((2,), "int64"), None)
    empty = Batches([])
    assert peek(empty) == (empty, None, None, EMPTY)
    assert empty.calls == []


# torch DataLoader.


class DictDataset:
    def __init__(self, batches):
        self.rows = [
            (x[i], {k: v[i] for k, v in y.items()})
            for x, y, _ in batches
            for i in range(len(x))
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def test_torch_dataloader():
    torch = pytest.importorskip("torch")
    batches = make_batches()
    loader = torch.utils.data.DataLoader(
        DictDataset(batches), batch_size=4, shuffle=False
    )
    loader2, _, _, batch = peek(loader)
    assert loader2 is loader
    assert describe(batch) == BATCH_SPEC[:2] + (None,)
    expected = [[x, y] for x, y, _ in batches]
    assert_same_batches(list(loader2), expected)
    assert_same_batches(list(loader2), expected)
    x, y, _ = make_arrays()
    tensors = torch.utils.data.TensorDataset(
        torch.from_numpy(x), torch.from_numpy(y["cls"]).long()
    )
    *_, batch = peek(torch.utils.data.DataLoader(tensors, batch_size=8))
    assert describe(batch) == (((8, 6), "float32"), ((8,), "int64"), None)
    empty = torch.utils.data.DataLoader([], batch_size=4)
    assert peek(empty) == (empty, None, None, EMPTY)


# validation_data.


def test_validation_tuples_of_arrays():
    x, y, sw = make_arrays()
    for data in ((x, y), (x, y, sw), [x, y], (x,)):
        data2, batch = peek_validation(data)
        assert data2 is data
        assert describe(batch.x) == ((8, 6), "float32")
        assert (batch.y is None) == (len(data) == 1)
    _, batch = peek_validation((x, y, sw))
    assert describe(batch.sample_weight)["reg"] == ((8,), "float32")
    assert peek_validation(None) == (None, None)
    bad = (x, x, x, x)
    assert peek_validation(bad) == (bad, None)


def test_validation_generators_and_datasets():
    batches = make_batches()
    data2, batch = peek_validation((b for b in batches))
    assert isinstance(data2, types.GeneratorType)
    assert describe(batch) == BATCH_SPEC
    assert_same_batches(list(data2), batches)

    data2, batch = peek_validation(((b for b in batches),))
    assert isinstance(data2, tuple) and len(data2) == 1
    assert describe(batch) == BATCH_SPEC
    assert_same_batches(list(data2[0]), batches)

    data = Batches(batches)
    data2, batch = peek_validation(data)
    assert data2 is data and describe(batch) == BATCH_SPEC

    gen = iter(())
    assert peek_validation(gen) == (gen, EMPTY)


def test_validation_tf_dataset():
    tf = pytest.importorskip("tensorflow")
    x, y, sw = make_arrays()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    ds2, batch = peek_validation(ds)
    assert ds2 is ds
    assert describe(batch.y)["cls"] == ((None,), "int32")


# Unknown kinds.


@pytest.mark.parametrize("x", [object(), 5, "text", [1, 2], None])
def test_unknown_inputs_pass_through(x):
    y = object()
    x2, y2, sw2, batch = peek(x, y)
    assert x2 is x and y2 is y and sw2 is None and batch is None


def test_bad_element_structure_gives_no_batch():
    x = np.zeros((2, 3), "float32")
    gen2, _, _, batch = peek(iter([(x, x, x, x)]))
    assert batch is None
    assert len(list(gen2)) == 1


# Imports.


def test_no_backend_import_at_top_level():
    tree = ast.parse(inspect.getsource(first_batch))
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in ("tensorflow", "torch", "jax")


def test_module_works_without_other_backends():
    """Loaded alone with every backend Keras did not import blocked."""
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        import keras
        import numpy as np

        roots = {BACKENDS + ("jaxlib",)!r}
        loaded = {{m.split(".")[0] for m in sys.modules}} & set(roots)

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in roots and name not in sys.modules:
                    raise ImportError("blocked " + name)

        sys.meta_path.insert(0, Block())
        spec = importlib.util.spec_from_file_location(
            "first_batch", {first_batch.__file__!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        x = np.zeros((4, 3), "float32")
        assert mod.peek(x, x)[3].y.shape == (4, 3)
        gen, _, _, batch = mod.peek(iter([(x, x)]))
        assert batch.x.shape == (4, 3) and len(list(gen)) == 1
        now = {{m.split(".")[0] for m in sys.modules}} & set(roots)
        assert now == loaded, (now, loaded)
        print("ok")
        """
    )
    env = dict(os.environ, KERAS_BACKEND=keras.config.backend())
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
