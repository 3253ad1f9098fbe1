"""Fault suite: bad labels and sample weights through every input kind.

Hypothesis draws a fault (a missing or extra task, labels of the wrong rank
or dtype, NaN or inf labels, empty batches, bad sample weights), an input
kind (arrays, `tf.data`, a generator, a `PyDataset`, validation data) and an
aggregator. Each fault has one documented outcome:

- a structural fault raises a `ValueError` naming the problem before any
  step runs, and the model is exactly as before (weights, optimizer state,
  balancer state), predicts the same and still trains;
- NaN labels and NaN sample weights are the masking rule: those samples
  are left out of their task's loss, and training goes on with finite
  weights;
- an inf label or an inf sample weight makes the step's loss
  non-finite: the step is skipped (weights and state unchanged) and counted
  in `skipped_steps`.
"""

import hypothesis.strategies as st
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings

import keras_mtl
from tests.helpers import to_numpy

tf = pytest.importorskip("tensorflow")

N, BATCH = 16, 8
UNITS = {"reg": 1, "cls": 3}
LOSSES = {"reg": "mse", "cls": "categorical_crossentropy"}

ERRORS = {
    # fault: a pattern the ValueError must match
    "missing_task": "missing",
    "extra_task": "unknown",
    "label_rank_low": "do not fit",
    "label_rank_high": "do not fit",
    "label_width": "do not fit",
    "label_batch": "batch",
    "label_strings": "numeric",
    "empty_labels": "exactly the tasks",
    "empty_batch": "no samples|holds no batch",
    "weight_unknown_task": "unknown tasks",
    "weight_rank": "sample weights must have shape",
    "weight_batch": "sample weights must have shape",
}
MASKED = ("nan_some", "nan_all", "weight_nan")
SKIPPED = ("inf_label", "weight_inf")
FAULTS = sorted(ERRORS) + list(MASKED) + list(SKIPPED)
KINDS = ("arrays", "tf_data", "generator", "py_dataset", "validation")


MODELS = {}


def trained_model(aggregator, subclassed):
    """One model per aggregator and model kind, trained one epoch, reused
    across examples (a fault must leave it as it was; masked and skipped
    steps train it legitimately)."""
    key = (aggregator, subclassed)
    if key not in MODELS:
        model = build_model(aggregator, subclassed)
        x, y = clean_data()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        MODELS[key] = model
    return MODELS[key]


class TwoHeads(keras_mtl.MultiTaskTrainer, keras.Model):
    def __init__(self):
        super().__init__()
        self.trunk = keras.layers.Dense(8, activation="tanh")
        self.heads = {t: keras.layers.Dense(u) for t, u in UNITS.items()}

    def call(self, x):
        h = self.trunk(x)
        return {t: head(h) for t, head in self.heads.items()}


def build_model(aggregator, subclassed=False):
    keras.utils.set_random_seed(0)
    if subclassed:
        model = TwoHeads()
    else:
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, activation="tanh", name="trunk")(inputs)
        outputs = {t: keras.layers.Dense(u, name=f"head_{t}")(h)
                   for t, u in UNITS.items()}
        model = keras_mtl.MultiTaskModel(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), loss=LOSSES,
                  aggregator=aggregator)
    return model


def clean_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 6)).astype("float32")
    y = {
        "reg": rng.normal(size=(N, 1)).astype("float32"),
        "cls": np.eye(3, dtype="float32")[rng.integers(0, 3, N)],
    }
    return x, y


def apply_fault(fault, task, y):
    """The labels and sample weights (or None) of a faulty batch."""
    y = dict(y)
    sw = None
    label = y[task]
    if fault == "missing_task":
        del y[task]
    elif fault == "extra_task":
        y["nope"] = label
    elif fault == "label_rank_low":
        y[task] = label[:, 0] if UNITS[task] > 1 else label[:, 0, None, None]
    elif fault == "label_rank_high":
        y[task] = label[..., None]
    elif fault == "label_width":
        y[task] = np.concatenate([label, label], axis=-1)
    elif fault == "label_batch":
        y[task] = label[: N - 1]
    elif fault == "label_strings":
        y[task] = label.astype(str)
    elif fault == "empty_labels":
        y = {}
    elif fault == "empty_batch":
        y = {t: v[:0] for t, v in y.items()}
    elif fault == "weight_unknown_task":
        sw = {"nope": np.ones(N, "float32")}
    elif fault == "weight_rank":
        sw = {task: np.ones((N, 2, 2), "float32")}
    elif fault == "weight_batch":
        sw = {task: np.ones(N - 1, "float32")}
    elif fault == "nan_some":
        y[task] = label.copy()
        y[task][::3] = np.nan
    elif fault == "nan_all":
        y[task] = np.full_like(label, np.nan)
    elif fault == "inf_label":
        y[task] = label.copy()
        y[task][0] = np.inf
    elif fault in ("weight_nan", "weight_inf"):
        weights = np.ones(N, "float32")
        weights[::BATCH] = np.nan if fault == "weight_nan" else np.inf
        sw = {task: weights}
    return y, sw


class Batches(keras.utils.PyDataset):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def batches(x, y, sw):
    """The data cut into `(x, y[, sw])` batches; a batch whose labels do not
    share the batch axis keeps them whole (the fault is in the batch)."""
    out = []
    for start in range(0, N, BATCH):
        cut = slice(start, start + BATCH)

        def take(a):
            return a[cut] if a.shape[:1] == (N,) else a

        parts = (x[cut], keras.tree.map_structure(take, y))
        if sw is not None:
            parts += (keras.tree.map_structure(take, sw),)
        out.append(parts)
    return out


def fit(model, kind, x, y, sw):
    """Trains one epoch on `(x, y, sw)` given as the input `kind`; with
    `"validation"` the faulty data is the validation data."""
    common = dict(epochs=1, verbose=0, shuffle=False)
    if kind == "arrays":
        return model.fit(x, y, sample_weight=sw, batch_size=BATCH, **common)
    if kind == "validation":
        clean_x, clean_y = clean_data(1)
        val = (x, y) if sw is None else (x, y, sw)
        return model.fit(clean_x, clean_y, batch_size=BATCH,
                         validation_data=val, **common)
    if kind == "tf_data":
        parts = (x, y) if sw is None else (x, y, sw)
        try:
            data = tf.data.Dataset.from_tensor_slices(parts).batch(BATCH)
        except (ValueError, tf.errors.InvalidArgumentError):
            # Mismatched batch axes cannot be sliced: batch them whole.
            data = tf.data.Dataset.from_tensors(parts)
        return model.fit(data, **common)
    data = batches(x, y, sw)
    if kind == "generator":
        return model.fit(iter(data), steps_per_epoch=len(data), **common)
    return model.fit(Batches(data), **common)


def snapshot(model):
    variables = (list(model.variables) + list(model.optimizer.variables))
    return [to_numpy(v).copy() for v in variables]


def assert_intact(model, before, x, predictions):
    after = snapshot(model)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    again = model.predict(x, verbose=0)
    for task in UNITS:
        np.testing.assert_array_equal(to_numpy(again[task]),
                                      predictions[task])


SETTINGS = settings(
    max_examples=40, deadline=None,
    derandomize=True, suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(
    fault=st.sampled_from(FAULTS),
    kind=st.sampled_from(KINDS),
    task=st.sampled_from(sorted(UNITS)),
    aggregator=st.sampled_from(["mgda", "pcgrad", "sum", "famo"]),
    subclassed=st.booleans(),
)
def test_bad_labels_and_weights(fault, kind, task, aggregator, subclassed):
    check_fault(fault, kind, task, aggregator, subclassed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault, task", [
    ("extra_task", "reg"),       # labels naming an unknown task
    ("label_rank_low", "cls"),   # (n,) labels for a 3-unit head
    ("label_width", "reg"),      # (n, 2) labels for a 1-unit head
])
def test_the_reported_bad_batches(fault, task, kind):
    """The bad batches of the issue that filed this suite, through every
    input kind."""
    check_fault(fault, kind, task, "mgda", subclassed=False)


def check_fault(fault, kind, task, aggregator, subclassed):
    """Feeds one fault through one input kind and checks its outcome."""
    if kind == "validation" and fault in SKIPPED:
        kind = "arrays"  # Evaluation reports non-finite losses as they are.
    model = trained_model(aggregator, subclassed)
    x, y = clean_data()
    before = snapshot(model)
    before_weights = [to_numpy(v).copy()
                      for v in model.weights + model.optimizer.variables]
    predictions = {t: to_numpy(v)
                   for t, v in model.predict(x, verbose=0).items()}
    bad_y, sw = apply_fault(fault, task, y)
    bad_x = x[:0] if fault == "empty_batch" else x

    if fault in ERRORS:
        with pytest.raises(ValueError, match=ERRORS[fault]):
            fit(model, kind, bad_x, bad_y, sw)
        assert_intact(model, before, x, predictions)
        history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
    elif fault in SKIPPED:
        history = fit(model, kind, bad_x, bad_y, sw)
        skipped = history.history["skipped_steps"][-1]
        assert 1 <= skipped <= N // BATCH
        if skipped == N // BATCH:  # Every step skipped: nothing trained.
            weights = model.weights + model.optimizer.variables
            for v, value in zip(weights, before_weights):
                np.testing.assert_array_equal(to_numpy(v), value)
    else:  # Masked labels.
        history = fit(model, kind, bad_x, bad_y, sw)
        logs = history.history
        assert np.isfinite(logs["loss"][-1])
        if kind != "validation":
            assert logs["skipped_steps"][-1] == 0
        elif fault == "nan_all":
            assert np.isnan(logs[f"val_{task}_loss"][-1])
        for value in snapshot(model):
            assert np.all(np.isfinite(value))


@pytest.mark.parametrize("kind", ["generator", "py_dataset"])
def test_a_bad_later_batch_leaves_a_usable_model(tmp_path, kind):
    """The first batch is fine and the second has labels of another rank:
    the error comes from inside the step, and the model still predicts,
    saves and trains."""
    model = build_model("pcgrad")
    x, y = clean_data()
    data = batches(x, y, None)
    data[1] = (data[1][0], {**data[1][1], "reg": data[1][1]["reg"][:, 0:1,
                                                                    None]})
    source = iter(data) if kind == "generator" else Batches(data)
    with pytest.raises(Exception):
        model.fit(source, epochs=1, verbose=0,
                  steps_per_epoch=2 if kind == "generator" else None)
    model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


@pytest.mark.parametrize("kind", ["generator", "py_dataset", "tf_data",
                                  "validation"])
def test_an_input_without_batches_is_refused(kind):
    model = trained_model("pcgrad", False)
    x, y = clean_data()
    before = snapshot(model)
    predictions = {t: to_numpy(v)
                   for t, v in model.predict(x, verbose=0).items()}
    empty = {"generator": iter(()), "py_dataset": Batches([]),
             "tf_data": tf.data.Dataset.from_tensor_slices(
                 (x, y)).batch(BATCH).take(0)}
    with pytest.raises(ValueError, match="holds no batch"):
        if kind == "validation":
            model.fit(x, y, batch_size=BATCH, verbose=0,
                      validation_data=iter(()))
        else:
            model.fit(empty[kind], epochs=1, verbose=0)
    assert_intact(model, before, x, predictions)
