"""`keras_mtl.data.interleave`: per-task datasets in one training stream."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.data import interleave


def task_data(sizes, seed=0):
    """Per-task arrays whose rows say where they come from: x[:, 0] is the
    task number, x[:, 1] the row; the label is a function of both."""
    data = {}
    for number, (task, size) in enumerate(sizes.items()):
        rows = np.arange(size, dtype="float32")
        x = np.stack([np.full(size, number, "float32"), rows,
                      np.random.default_rng(seed + number).normal(
                          size=size).astype("float32")], axis=1)
        data[task] = (x, (10 * number + rows)[:, None].astype("float32"))
    return data


def served(stream, epochs=1):
    """`{task: [row, ...]}` of the labelled rows served, checking that each
    row carries exactly its own task's label."""
    tasks = list(stream.tasks)
    seen = {t: [] for t in tasks}
    for _ in range(epochs):
        for index in range(len(stream)):
            x, y = stream[index][:2]
            labelled = {t: ~np.isnan(y[t][:, 0]) for t in tasks}
            assert np.all(sum(labelled.values()) == 1)
            for number, task in enumerate(tasks):
                rows = labelled[task]
                assert np.all(x[rows, 0] == number)
                np.testing.assert_array_equal(
                    y[task][rows, 0], 10 * number + x[rows, 1])
                seen[task].extend(x[rows, 1].astype(int).tolist())
        stream.on_epoch_end()
    return seen


SIZES = {"big": 600, "medium": 150, "small": 50}


def test_proportional_mixed_batches_mask_and_sample_without_replacement():
    stream = interleave(task_data(SIZES), batch_size=25, seed=0)
    assert len(stream) == 32
    assert stream.probabilities == pytest.approx(
        {"big": 0.75, "medium": 0.1875, "small": 0.0625})
    seen = served(stream, epochs=5)
    total = sum(len(v) for v in seen.values())
    for task, size in SIZES.items():
        assert len(seen[task]) / total == pytest.approx(size / 800, abs=0.02)
        # Without replacement: each pass over a task covers all its rows.
        first = seen[task][:size]
        assert sorted(first) == list(range(size))


def test_temperature_round_robin_and_sequential_schedules():
    data = task_data(SIZES)
    stream = interleave(data, batch_size=10, schedule="temperature",
                        temperature=2.0)
    roots = {t: n ** 0.5 for t, n in SIZES.items()}
    assert stream.probabilities == pytest.approx(
        {t: r / sum(roots.values()) for t, r in roots.items()})
    robin = interleave(data, batch_size=10, schedule="round_robin",
                       batches="per_task", steps_per_epoch=6)
    order = [next(t for t, v in robin[i][1].items()
                  if not np.all(np.isnan(v))) for i in range(6)]
    assert order == ["big", "medium", "small"] * 2
    sequential = interleave(data, batch_size=64, schedule="sequential")
    assert len(sequential) == 10 + 3 + 1
    seen = served(sequential)
    assert {t: sorted(v) for t, v in seen.items()} == {
        t: list(range(n)) for t, n in SIZES.items()}


def test_per_task_batches_hold_one_task():
    stream = interleave(task_data(SIZES), batch_size=16, batches="per_task",
                        seed=1)
    for index in range(len(stream)):
        _, y = stream[index]
        assert sum(not np.all(np.isnan(v)) for v in y.values()) == 1
        assert len(y["big"]) == 16


def test_sample_weight_mode_and_integer_labels():
    data = {"a": (np.ones((8, 2), "float32"), np.arange(8)[:, None]),
            "b": (np.zeros((4, 2), "float32"), np.arange(4)[:, None],
                  np.full(4, 0.5, "float32"))}
    with pytest.raises(ValueError, match="cannot hold NaN"):
        interleave(data, batch_size=4)[0]
    stream = interleave(data, batch_size=4, missing="sample_weight", seed=2)
    for index in range(len(stream)):
        x, y, w = stream[index]
        assert y["a"].dtype == data["a"][1].dtype
        from_a = x[:, 0] == 1
        np.testing.assert_array_equal(w["a"], from_a.astype("float32"))
        np.testing.assert_array_equal(w["b"], 0.5 * (~from_a))


def test_batch_sources_generators_py_datasets_and_iterables():
    rng = np.random.default_rng(3)

    def endless():
        while True:
            yield (rng.normal(size=(5, 3)).astype("float32"),
                   np.ones((5, 1), "float32"))

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return (np.full((5, 3), index, "float32"),
                    np.zeros((5, 1), "float32"))

    listed = [(np.ones((5, 3), "float32"), np.full((5, 1), 2.0, "float32"))]
    stream = interleave({"gen": endless(), "py": Batches(), "list": listed},
                        batches="per_task", schedule="round_robin",
                        steps_per_epoch=9)
    for index in range(9):
        x, y = stream[index]
        assert x.shape == (5, 3)
    assert stream.task_counts == {"gen": 15, "py": 15, "list": 15}
    with pytest.raises(ValueError, match="per_task"):
        interleave({"gen": endless()})
    with pytest.raises(ValueError, match="sizes"):
        interleave({"gen": endless()}, batches="per_task",
                   steps_per_epoch=3)
    sized = interleave({"gen": endless(), "py": Batches()},
                       batches="per_task", sizes={"gen": 30, "py": 10},
                       steps_per_epoch=4)
    assert sized.probabilities == {"gen": 0.75, "py": 0.25}

    def finite():
        yield listed[0]

    once = interleave({"once": finite()}, batches="per_task",
                      schedule="round_robin", steps_per_epoch=2)
    once[0]
    with pytest.raises(ValueError, match="cannot restart"):
        once[1]


def test_a_schedule_callable_makes_a_curriculum_through_fit():
    calls = []

    def anti_curriculum(epoch, sizes):
        calls.append(epoch)
        return {"hard": 1.0, "easy": 0.0 if epoch == 0 else 1.0}

    data = task_data({"hard": 40, "easy": 40})
    stream = interleave(data, batch_size=8, schedule=anti_curriculum,
                        seed=4)
    assert stream.probabilities == {"hard": 1.0, "easy": 0.0}
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4)(inputs)
    model = keras_mtl.MultiTaskModel(inputs, {
        t: keras.layers.Dense(1, name=t)(hidden) for t in ("hard", "easy")})
    model.compile(optimizer="sgd", loss={"hard": "mse", "easy": "mse"})
    model.fit(stream, epochs=2, verbose=0)
    assert calls[:2] == [0, 1]
    assert stream.probabilities == {"hard": 0.5, "easy": 0.5}


def test_fit_and_evaluate_leave_missing_labels_out():
    data = task_data({"a": 120, "b": 40}, seed=5)
    inputs = keras.Input((3,))
    keras.utils.set_random_seed(6)
    outputs = {t: keras.layers.Dense(1, name=t)(inputs) for t in "ab"}
    model = keras_mtl.MultiTaskModel(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(1e-3),
                  loss={"a": "mse", "b": "mse"})
    model.fit(interleave(data, batch_size=16, seed=7), epochs=1, verbose=0)
    got = model.evaluate(interleave(data, batch_size=40,
                                    schedule="sequential"),
                         verbose=0, return_dict=True)
    for task in "ab":
        x, y = data[task]
        predicted = keras.ops.convert_to_numpy(model(x)[task])
        want = float(np.mean((predicted - y) ** 2))
        assert got[f"{task}_loss"] == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"datasets": {}}, "`datasets`"),
    ({"batch_size": 0}, "`batch_size`"),
    ({"schedule": "random"}, "`schedule`"),
    ({"temperature": 0}, "`temperature`"),
    ({"batches": "both"}, "`batches`"),
    ({"missing": "zero"}, "`missing`"),
    ({"steps_per_epoch": -1}, "`steps_per_epoch`"),
    ({"sizes": {"zzz": 3}}, "`sizes`"),
    ({"schedule": lambda epoch, sizes: {"a": -1}}, "non-negative"),
])
def test_argument_errors(kwargs, match):
    arguments = {"datasets": task_data({"a": 4})}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        interleave(**arguments)
    with pytest.raises(ValueError, match="different numbers of rows"):
        interleave({"a": (np.ones((3, 2)), np.ones((4, 1)))})
