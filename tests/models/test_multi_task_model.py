"""MultiTaskModel as a Keras model: fit/evaluate/predict, logs, masking,
errors and saving."""

import os

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import rules_for_backend
from tests.helpers import to_numpy

TASKS = ("reg", "cls", "bin")


def compiled(aggregator="pcgrad", **kwargs):
    model = mtl_model(**kwargs)
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=LOSSES,
        metrics={"cls": ["accuracy"], "bin": ["accuracy"], "reg": ["mae"]},
        weighted_metrics={"reg": ["mse"]},
        aggregator=aggregator,
    )
    return model


def test_fit_evaluate_predict_and_logs():
    x, y = make_data(64)
    model = compiled("mgda")
    history = model.fit(
        x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y)
    )
    keys = set(history.history)
    for task in TASKS:
        assert {f"{task}_loss", f"{task}_weight", f"val_{task}_loss"} <= keys
        assert f"val_{task}_weight" not in keys
    assert {"loss", "val_loss", "cls_accuracy", "bin_accuracy",
            "reg_mae", "weighted_reg_mse",
            "mgda_solver_gap"} <= keys
    weights = [history.history[f"{t}_weight"][-1] for t in TASKS]
    assert sum(weights) == pytest.approx(1.0, abs=1e-4)
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    task_sum = sum(results[f"{t}_loss"] for t in TASKS)
    assert results["loss"] == pytest.approx(task_sum, rel=1e-5)
    predictions = model.predict(x, verbose=0)
    assert set(predictions) == set(TASKS)
    assert predictions["cls"].shape == (64, 3)
    # evaluate's task losses are the plain per-task means.
    mse = np.mean((predictions["reg"] - y["reg"]) ** 2)
    assert results["reg_loss"] == pytest.approx(mse, rel=1e-4)


def test_nan_labels_are_left_out_of_the_task_loss():
    x, y = make_data(32)
    model = compiled("sum")
    predictions = model.predict(x, verbose=0)["reg"]
    y_missing = dict(y)
    reg = y["reg"].copy()
    reg[::2] = np.nan
    y_missing["reg"] = reg
    results = model.evaluate(x, y_missing, batch_size=32, verbose=0,
                             return_dict=True)
    labelled = ~np.isnan(reg[:, 0])
    expected = np.mean((predictions[labelled] - reg[labelled]) ** 2)
    assert results["reg_loss"] == pytest.approx(expected, rel=1e-5)
    mae = np.mean(np.abs(predictions[labelled] - reg[labelled]))
    assert results["reg_mae"] == pytest.approx(mae, rel=1e-5)


def test_zero_sample_weight_equals_a_missing_label():
    x, y = make_data(32)
    model = compiled("sum")
    reg = y["reg"].copy()
    reg[:10] = np.nan
    y_nan = {**y, "reg": reg}
    a = model.evaluate(x, y_nan, batch_size=32, verbose=0, return_dict=True)
    ones = np.ones(32, "float32")
    weights = {"reg": (np.arange(32) >= 10).astype("float32"), "cls": ones,
               "bin": ones}
    b = model.evaluate(x, y, sample_weight=weights, batch_size=32, verbose=0,
                       return_dict=True)
    assert a["reg_loss"] == pytest.approx(b["reg_loss"], rel=1e-6)


@pytest.mark.parametrize("aggregator", ["sum", "mean", "mgda", "pcgrad"])
def test_task_without_labels_in_batch_contributes_nothing(aggregator):
    x, y = make_data(32)
    reg = np.full_like(y["reg"], np.nan)
    y = {**y, "reg": reg}
    model = compiled(aggregator)
    head = [v for v in model.trainable_variables if v.path == "head_reg/kernel"]
    before = to_numpy(head[0])
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["reg_loss"] == 0.0
    assert all(np.isfinite(v) for v in logs.values())
    for v in model.trainable_variables:
        assert np.all(np.isfinite(to_numpy(v))), v.path
    np.testing.assert_array_equal(to_numpy(head[0]), before)
    if aggregator == "mgda":
        assert logs["reg_weight"] == 0.0
        # The labelled tasks still train.
        assert logs["cls_weight"] + logs["bin_weight"] == pytest.approx(1.0)


def test_clear_errors():
    x, y = make_data(16)
    model = mtl_model()
    with pytest.raises(ValueError, match="unknown tasks \\['nope'\\]"):
        model.compile("sgd", loss={**LOSSES, "nope": "mse"})
    with pytest.raises(ValueError, match="missing tasks \\['bin'\\]"):
        model.compile("sgd", loss={"reg": "mse", "cls": LOSSES["cls"]})
    with pytest.raises(ValueError, match="`loss` is required"):
        model.compile("sgd")
    with pytest.raises(ValueError, match="gradient_mode='grads'"):
        model.compile("sgd", loss=LOSSES, gradient_mode="grads")
    with pytest.raises(ValueError, match="features=None"):
        model.compile("sgd", loss=LOSSES, gradient_mode="features")
    with pytest.raises(ValueError, match="features='nope'"):
        model.compile(
            "sgd", loss=LOSSES, gradient_mode="features", features="nope"
        )
    with pytest.raises(ValueError, match="not both"):
        model.compile("sgd", loss=LOSSES, loss_weights={t: 1.0 for t in TASKS},
                      aggregator="sum")
    with pytest.raises(ValueError, match="Unknown aggregator"):
        model.compile("sgd", loss=LOSSES, aggregator="pcgard")
    with pytest.raises(ValueError, match="must be compiled"):
        model.train_on_batch(x, y)
    model.compile("sgd", loss=LOSSES, aggregator="pcgrad")
    with pytest.raises(ValueError, match="missing: \\['bin'\\]"):
        model.fit(x, {"reg": y["reg"], "cls": y["cls"]}, verbose=0)
    with pytest.raises(ValueError, match="unknown: \\['extra'\\]"):
        model.fit(x, {**y, "extra": y["reg"]}, verbose=0)
    with pytest.raises(ValueError, match="Task 'reg'.*shape"):
        model.fit(x, {**y, "reg": np.zeros((16, 4), "float32")}, verbose=0)
    with pytest.raises(ValueError, match="outputs"):
        keras_mtl.MultiTaskModel(model.input, model.output["reg"])
    with pytest.raises(ValueError, match="accuracy"):
        mtl_model().compile("sgd", loss="mse", metrics={"reg": ["accuracy"]})


def test_loss_weights_become_constant_aggregator():
    model = mtl_model()
    model.compile(
        "sgd",
        loss=LOSSES,
        loss_weights={"reg": 2.0, "cls": 1.0, "bin": 0.5},
    )
    assert isinstance(model.aggregator, keras_mtl.aggregators.Constant)
    assert model.aggregator.weights == [2.0, 1.0, 0.5]


def test_from_model_wraps_a_functional_model():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4)(inputs)
    plain = keras.Model(inputs, {"a": keras.layers.Dense(1)(h),
                                 "b": keras.layers.Dense(1)(h)})
    model = keras_mtl.MultiTaskModel.from_model(plain)
    assert model.task_names == ("a", "b")
    assert len(model.shared_variables) == 2
    with pytest.raises(ValueError, match="dict"):
        keras_mtl.MultiTaskModel.from_model(keras.Model(inputs, h))


@pytest.mark.parametrize("aggregator", ["mgda", "pcgrad"])
def test_keras_saving_round_trip_with_aggregator_state(tmp_path, aggregator):
    x, y = make_data(48)
    model = mtl_model(shared_variables=["features/kernel", "features/bias",
                                        "trunk_1/kernel"])
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=LOSSES,
        metrics={"cls": ["accuracy"]},
        aggregator=keras_mtl.aggregators.get(aggregator),
        gradient_mode="features",
        features="features",
        weight_task_specific=True,
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_mtl.MultiTaskModel)
    assert loaded.aggregator.get_config() == model.aggregator.get_config()
    assert loaded.gradient_mode == "features" and loaded.weight_task_specific
    assert [v.path for v in loaded.shared_variables] == [
        v.path for v in model.shared_variables]
    for key, variable in model.balancer.state.items():
        np.testing.assert_allclose(
            to_numpy(loaded.balancer.state[key]), to_numpy(variable))
    np.testing.assert_allclose(
        to_numpy(loaded.optimizer.iterations),
        to_numpy(model.optimizer.iterations))
    a, b = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for task in TASKS:
        np.testing.assert_allclose(a[task], b[task], rtol=1e-5, atol=1e-6)
    # Training continues identically from the checkpoint.
    model.fit(x, y, batch_size=48, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=48, epochs=1, verbose=0, shuffle=False)
    if aggregator == "mgda":
        for w1, w2 in zip(model.get_weights(), loaded.get_weights()):
            np.testing.assert_allclose(w1, w2, rtol=1e-4, atol=1e-6)


def test_mgda_state_is_restored_by_saving(tmp_path):
    model = compiled("mgda")
    model.balancer.state["solver_gap"].assign(0.25)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert float(to_numpy(loaded.balancer.state["solver_gap"])) == 0.25


def test_balancing_state_of_an_earlier_version_or_another_rule(tmp_path):
    model = compiled("mgda")
    model.balancer.state["solver_gap"].assign(0.25)
    model.balancer.state["weights"].assign([0.5, 0.25, 0.25])
    saved = dict(model.balancer.named_variables())
    # A file written before MGDA kept its weights: the rest is restored.
    older = {k: to_numpy(v) for k, v in saved.items()
             if k != "state.weights"}
    fresh = compiled("mgda")
    with pytest.warns(UserWarning, match="state.weights"):
        fresh.balancer.load_own_variables(older)
    assert float(to_numpy(fresh.balancer.state["solver_gap"])) == 0.25
    np.testing.assert_array_equal(
        to_numpy(fresh.balancer.state["weights"]), np.zeros(3))
    # A file of another rule changes nothing.
    other = compiled("nash_mtl")
    before = {k: to_numpy(v)
              for k, v in other.balancer.named_variables().items()}
    with pytest.warns(UserWarning, match="another aggregator"):
        other.balancer.load_own_variables(
            {k: to_numpy(v) for k, v in saved.items()})
    for key, variable in other.balancer.named_variables().items():
        np.testing.assert_array_equal(to_numpy(variable), before[key])


def test_recompiling_replaces_aggregator_state():
    model = compiled("mgda")
    n = len(model.non_trainable_variables)
    model.compile("sgd", loss=LOSSES, aggregator="pcgrad")
    mgda_state = keras_mtl.aggregators.MGDA().initial_state(3)
    assert len(model.non_trainable_variables) == n - len(mgda_state)
    model.compile("sgd", loss=LOSSES, aggregator="mgda")
    assert len(model.non_trainable_variables) == n


def test_pcgrad_training_is_reproducible_with_a_seed():
    x, y = make_data(64)
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(11)
        model = compiled("pcgrad")
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "name", rules_for_backend(keras_mtl.aggregators.ALL_AGGREGATORS,
                              ("jax", "tensorflow")))
def test_every_aggregator_trains_inside_the_model(name):
    x, y = make_data(32)
    model = mtl_model()
    aggregator = (keras_mtl.aggregators.Constant([1.0, 0.5, 2.0])
                  if name == "constant" else name)
    model.compile(
        keras.optimizers.Adam(1e-2), loss=LOSSES, aggregator=aggregator
    )
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for key, values in history.history.items():
        assert np.all(np.isfinite(values)), key
    assert {f"{t}_weight" for t in TASKS} <= set(history.history)
    for v in model.trainable_variables:
        assert np.all(np.isfinite(to_numpy(v))), v.path
