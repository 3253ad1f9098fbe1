"""`keras_mtl.distribute.ShardedBatches` and the process helpers."""

import numpy as np
import pytest

import keras_mtl

ShardedBatches = keras_mtl.distribute.ShardedBatches


def data(n=10):
    x = np.arange(n, dtype="float32")[:, None]
    y = {"a": np.arange(n, dtype="float32"), "b": -np.arange(n)}
    return x, y


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_the_parts_make_up_the_global_batches(world, shuffle):
    x, y = data(23)
    shards = [ShardedBatches(x, y, batch_size=8, shuffle=shuffle, seed=3,
                             rank=r, world_size=world) for r in range(world)]
    order = shards[0].order
    assert all(np.array_equal(s.order, order) for s in shards)
    assert len({len(s) for s in shards}) == 1
    for index in range(len(shards[0])):
        parts = [s[index] for s in shards]
        sizes = {len(p[0]) for p in parts}
        assert len(sizes) == 1  # Equal parts.
        joined = np.concatenate([p[0][:, 0] for p in parts])
        start = index * 8
        expected = order[start: start + min(8, 23 - start)]
        # Each global batch, in order, less at most world - 1 samples.
        np.testing.assert_array_equal(joined, expected[: len(joined)])
        assert len(expected) - len(joined) < world
        for p in parts:  # Labels travel with their inputs.
            np.testing.assert_array_equal(p[1]["a"], p[0][:, 0])
            np.testing.assert_array_equal(p[1]["b"], -p[0][:, 0])


def test_a_new_order_every_epoch_and_missing_weights_are_ones():
    x, y = data(16)
    shard = ShardedBatches(x, y, {"a": np.full(16, 2.0), "b": None},
                           batch_size=4, shuffle=True, seed=0)
    first = shard.order.copy()
    _, _, weights = shard[0]
    np.testing.assert_array_equal(weights["b"], np.ones(4))
    np.testing.assert_array_equal(weights["a"], np.full(4, 2.0))
    shard.on_epoch_end()
    assert not np.array_equal(first, shard.order)
    assert sorted(shard.order) == list(range(16))


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 1, "world_size": 2, "rank": 0}, "batch_size"),
    ({"batch_size": 4, "world_size": 2, "rank": 2}, "rank"),
    ({"batch_size": 4, "world_size": 0, "rank": 0}, "world_size"),
    ({"batch_size": "4"}, "batch_size"),
])
def test_bad_arguments_are_refused(kwargs, match):
    x, y = data()
    with pytest.raises(ValueError, match=match):
        ShardedBatches(x, y, **kwargs)


def test_inputs_of_different_lengths_are_refused():
    x, y = data()
    with pytest.raises(ValueError, match="same number of samples"):
        ShardedBatches(x[:5], y, batch_size=2)


def test_out_of_range_index():
    x, y = data()
    with pytest.raises(IndexError, match="out of range"):
        ShardedBatches(x, y, batch_size=4)[3]


def test_one_process_helpers():
    assert keras_mtl.distribute.world_size() == 1
    assert keras_mtl.distribute.rank() == 0
    assert keras_mtl.distribute.is_chief()
    assert keras_mtl.distribute.chief_path("a/b.keras") == "a/b.keras"
    with pytest.raises(ValueError, match="path"):
        keras_mtl.distribute.chief_path(3)
    with pytest.raises(ValueError, match="num_processes"):
        keras_mtl.distribute.initialize(num_processes=-1)
