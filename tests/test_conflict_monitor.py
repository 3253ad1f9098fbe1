"""`ConflictMonitor`: the recorded weights, norms and cosines against a
float64 closed form of the per-task gradients."""

import glob
import os

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.src.callbacks.conflict_monitor import gramian_statistics

BATCH = 8


def linear_model(tasks=("a", "b"), seed=0):
    """A linear trunk `h = x W + c` with one linear head per task."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((3,))
    h = keras.layers.Dense(4, name="trunk")(x)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in tasks}
    return keras_mtl.MultiTaskModel(x, outputs)


def data(num=24, seed=1, tasks=("a", "b")):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, 3)).astype("float32")
    y = {t: rng.normal(size=(num, 1)).astype("float32") for t in tasks}
    return x, y


def reference_jacobian(model, x, y, tasks):
    """Rows: each task's mean-squared-error gradient of the trunk's kernel
    and bias, in float64 from the closed form."""
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(v), np.float64)
                    for v in model.get_layer("trunk").weights)
    x = x.astype(np.float64)
    h = x @ kernel + bias
    rows = []
    for task in tasks:
        w, c = (np.asarray(keras.ops.convert_to_numpy(v), np.float64)
                for v in model.get_layer(task).weights)
        residual = (h @ w + c)[:, 0] - y[task][:, 0]
        dh = (2.0 * residual / len(x))[:, None] * w[:, 0][None, :]
        rows.append(np.concatenate([(x.T @ dh).ravel(), dh.sum(axis=0)]))
    return np.stack(rows)


@pytest.mark.parametrize("aggregator, groups", [
    ("mgda", None),          # a Gramian rule: the step's own Gramian
    ("pcgrad", "variable"),  # a Jacobian rule, per-variable groups
])
def test_records_match_float64_gradients(aggregator, groups):
    tasks = ("a", "b")
    model = linear_model(tasks)
    # Learning rate 0: every step sees the same weights.
    model.compile(keras.optimizers.SGD(0.0), loss="mse",
                  aggregator=aggregator, aggregation_groups=groups)
    x, y = data(tasks=tasks)
    monitor = keras_mtl.callbacks.ConflictMonitor()
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False,
                        callbacks=[monitor], verbose=0)
    steps = len(x) // BATCH
    record = monitor.history
    np.testing.assert_array_equal(record["step"], np.arange(1, 2 * steps + 1))
    for n in range(2 * steps):
        rows = slice((n % steps) * BATCH, (n % steps + 1) * BATCH)
        jac = reference_jacobian(model, x[rows],
                                 {t: y[t][rows] for t in tasks}, tasks)
        norms, cosines = gramian_statistics(jac @ jac.T)
        np.testing.assert_allclose(record["grad_norms"][n], norms, rtol=1e-4)
        np.testing.assert_allclose(record["cosines"][n], cosines, atol=1e-5)
        if aggregator == "mgda":
            # Two tasks: the min-norm point of the segment, in closed form.
            g1, g2 = jac
            alpha = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
            np.testing.assert_allclose(record["task_weights"][n],
                                       [alpha, 1 - alpha], atol=1e-4)
    # The epoch logs are the means of the epoch's records.
    for task, i in zip(tasks, range(2)):
        np.testing.assert_allclose(
            history.history[f"{task}_grad_norm"][-1],
            record["grad_norms"][steps:, i].mean(), rtol=1e-5)
        np.testing.assert_allclose(
            history.history[f"{task}_weight"][-1],
            record["task_weights"][steps:, i].mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(history.history["cos_a_b"][0],
                               record["cosines"][:steps, 0, 1].mean(),
                               rtol=1e-5)


def test_every_validation_skips_and_tensorboard(tmp_path):
    """Records of `every` steps average their Gramians; validation does not
    lose the epoch's last steps; a skipped step adds nothing; the records
    reach TensorBoard."""
    tasks = ("a", "b", "c")
    model = linear_model(tasks)
    model.compile(keras.optimizers.SGD(0.0), loss="mse", aggregator="upgrad")
    x, y = data(num=40, tasks=tasks)
    x[20] = np.inf  # batch 3 of 5 is not finite: skipped
    monitor = keras_mtl.callbacks.ConflictMonitor(every=2,
                                                  log_dir=str(tmp_path))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              validation_data=(x[:8], {t: v[:8] for t, v in y.items()}),
              callbacks=[monitor])
    record = monitor.history
    np.testing.assert_array_equal(record["step"], [2, 4, 5])
    # Steps 3 and 4: step 3 skipped, so the record is step 4's alone.
    rows = slice(3 * BATCH, 4 * BATCH)
    jac = reference_jacobian(model, x[rows], {t: y[t][rows] for t in tasks},
                             tasks)
    np.testing.assert_allclose(record["cosines"][1],
                               gramian_statistics(jac @ jac.T)[1], atol=1e-5)
    # Steps 1 and 2: the mean Gramian of the two batches.
    gram = sum(j @ j.T for j in (
        reference_jacobian(model, x[r], {t: y[t][r] for t in tasks}, tasks)
        for r in (slice(0, 8), slice(8, 16))))
    np.testing.assert_allclose(record["grad_norms"][0],
                               gramian_statistics(gram / 2)[0], rtol=1e-4)
    assert np.isfinite(record["cosines"]).all()
    written = read_scalars(tmp_path)
    np.testing.assert_allclose(written["cosine/a_b"],
                               [(s, c) for s, c in zip(
                                   record["step"], record["cosines"][:, 0, 1])],
                               rtol=1e-6)
    assert set(written) >= {"task_weight/c", "grad_norm/a", "cosine/b_c"}


def read_scalars(log_dir):
    """`{tag: [(step, value), ...]}` from the event files of `log_dir`."""
    tf = pytest.importorskip("tensorflow")
    scalars = {}
    for path in glob.glob(os.path.join(str(log_dir), "*tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                metadata = value.metadata.plugin_data.plugin_name
                assert metadata == "scalars"
                scalars.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    return scalars


def test_loss_level_rule_records_weights_only():
    model = linear_model()
    model.compile("sgd", loss="mse", aggregator="uncertainty_weighting")
    x, y = data()
    monitor = keras_mtl.callbacks.ConflictMonitor()
    with pytest.warns(UserWarning, match="no per-task gradients"):
        model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[monitor],
                  verbose=0)
    assert np.isfinite(monitor.history["task_weights"]).all()
    assert np.isnan(monitor.history["cosines"]).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="every"):
        keras_mtl.callbacks.ConflictMonitor(every=0)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="MultiTaskModel"):
        plain.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0,
                  callbacks=[keras_mtl.callbacks.ConflictMonitor()])


def test_gramian_statistics_zero_gradient():
    norms, cosines = gramian_statistics(np.array([[4.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(norms, [2.0, 0.0])
    assert cosines[0, 0] == 1.0 and np.isnan(cosines[0, 1])
