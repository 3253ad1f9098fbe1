"""Training state is kept apart from what inference needs, survives
failures, and is updated only by applied steps."""

import os

import keras
import numpy as np
import pytest

from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import rules_for_backend
from tests.helpers import to_numpy


def compiled(aggregator="mgda", **kwargs):
    model = mtl_model()
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES,
                  aggregator=aggregator, **kwargs)
    return model


def snapshot(model):
    return [to_numpy(v) for v in model.variables]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("aggregator", ["mgda", "famo"])
def test_inference_loading_ignores_training_state(tmp_path, aggregator):
    x, y = make_data(32)
    model = compiled(aggregator)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    assert len(model.weights) < len(model.variables)
    bare = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(bare.predict(x, verbose=0)["reg"],
                               model.predict(x, verbose=0)["reg"], atol=1e-6)
    for other in (mtl_model(), compiled("pcgrad"), compiled("sum")):
        other.load_weights(path)
        np.testing.assert_allclose(
            other.predict(x, verbose=0)["reg"],
            model.predict(x, verbose=0)["reg"], atol=1e-6)


def test_jit_compile_is_saved_as_given(tmp_path):
    model = compiled()
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    assert model.get_compile_config()["jit_compile"] == "auto"


def test_recompiling_keeps_the_aggregator_state():
    x, y = make_data(32)
    model = compiled("famo")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    logits = to_numpy(model.balancer.state["logits"])
    assert np.abs(logits).sum() > 0
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES, aggregator="famo")
    np.testing.assert_array_equal(
        to_numpy(model.balancer.state["logits"]), logits)


def test_a_failed_fit_leaves_the_model_intact():
    x, y = make_data(32)
    model = compiled()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = snapshot(model)
    bad = {**y, "reg": np.zeros((32, 2), "float32")}
    with pytest.raises(ValueError, match="reg"):
        model.fit(x, bad, batch_size=16, epochs=1, verbose=0)
    assert_same(snapshot(model), before)
    model.predict(x, verbose=0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize("aggregator", ["mgda", "sum", "famo"])
def test_non_finite_steps_are_skipped_and_counted(aggregator):
    x, y = make_data(32)
    model = compiled(aggregator)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    before = snapshot(model)
    x_bad = x.copy()
    x_bad[3, 0] = np.inf
    logs = model.train_on_batch(x_bad, y, return_dict=True)
    assert logs["skipped_steps"] == 1.0
    after = snapshot(model)
    weights = {id(v) for v in model.weights} | {
        id(v) for v in model.balancer.state.values()}
    for v, a, b in zip(model.variables, before, after):
        if id(v) in weights:
            np.testing.assert_array_equal(a, b, err_msg=v.path)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["skipped_steps"] == 0.0


@pytest.mark.parametrize("traced", [False, True])
def test_finiteness_check_is_exact(traced):
    """Sums that overflow float32 are not mistaken for non-finite values;
    every NaN or inf, alone or mixed, is caught."""
    from keras_mtl.src import backend
    from keras_mtl.src.models.balancer import Balancer

    balancer = Balancer(("a", "b"), "mse")
    big = np.full((4, 3), 3e38, "float32")
    cases = [
        ([np.ones(3, "float32"), big, -big], True),
        ([big, np.full((4, 3), 60000.0, "float16")], True),
        ([np.array([1.0, np.nan], "float32")], False),
        ([big, np.array([np.inf, 1.0], "float32")], False),
        ([np.array([np.inf, -np.inf], "float32")], False),
        ([big, np.array([-np.inf], "float16")], False),
    ]
    losses = np.ones(2, "float32")
    for grads, expected in cases:
        def check(losses, *grads):
            return balancer.check_finite(losses, list(grads) + [None])

        fn = backend.jit(check) if traced else check
        ok = fn(keras.ops.convert_to_tensor(losses),
                *[keras.ops.convert_to_tensor(g) for g in grads])
        assert bool(to_numpy(ok)) is expected, grads
    bad_loss = np.array([1.0, np.nan], "float32")
    assert not bool(to_numpy(balancer.check_finite(bad_loss, [big])))


def test_non_finite_raise_stops_fit():
    x, y = make_data(32)
    model = compiled("pcgrad", non_finite="raise")
    x_bad = x.copy()
    x_bad[0, 0] = np.nan
    before = [to_numpy(v) for v in model.weights]
    with pytest.raises(FloatingPointError):
        model.fit(x_bad, y, batch_size=32, epochs=1, verbose=0)
    assert_same([to_numpy(v) for v in model.weights], before)


def test_famo_updates_only_when_the_optimizer_applies():
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.Adam(1e-2, gradient_accumulation_steps=4),
                  loss=LOSSES, aggregator="famo")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 4 micro-batches.
    assert float(to_numpy(model.balancer.state["step"])) == 1.0


def test_validation_task_without_labels_logs_nan():
    x, y = make_data(32)
    model = compiled("sum", metrics={"reg": ["mae"]})
    y_val = {**y, "reg": np.full_like(y["reg"], np.nan)}
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                        validation_data=(x, y_val))
    assert np.isnan(history.history["val_reg_loss"][-1])
    assert np.isnan(history.history["val_reg_mae"][-1])
    assert np.isfinite(history.history["val_cls_loss"][-1])


@pytest.mark.parametrize("aggregator", ["mgda", "pcgrad", "upgrad", "nash_mtl",
                                        "cagrad", "gradvac"])
def test_a_frozen_trunk_trains_with_any_aggregator(aggregator):
    x, y = make_data(32)
    model = mtl_model()
    for layer in model.layers:
        if layer.name in ("trunk_1", "features"):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES,
                  aggregator=aggregator)
    head = model.get_layer("head_reg").kernel
    before = to_numpy(head)
    with pytest.warns(UserWarning, match="No trainable variable is shared"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not np.allclose(to_numpy(head), before)


@pytest.mark.parametrize("compile_first", [False, True])
def test_clone_model_gives_a_multi_task_model(compile_first):
    x, y = make_data(32)
    model = compiled("mgda") if compile_first else mtl_model()
    clone = keras.models.clone_model(model)
    assert type(clone) is type(model)
    assert set(clone.task_names) == set(model.task_names)
    if compile_first:
        assert clone.aggregator.get_config() == model.aggregator.get_config()
        clone.fit(x, y, batch_size=16, epochs=1, verbose=0)


@pytest.mark.skipif(
    keras.config.backend() == "torch",
    reason="Keras' tf_saved_model export fails on PyTorch for plain "
           "functional models too (torch.export dynamic shapes, Keras 3.15)")
def test_export_serves_the_trained_model(tmp_path):
    tf = pytest.importorskip("tensorflow")
    x, y = make_data(32)
    model = compiled("famo")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.export(str(tmp_path / "served"), format="tf_saved_model",
                 verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "served"))
    served = reloaded.serve(x)
    expected = model.predict(x, verbose=0)
    assert set(served) == set(expected)
    for task, value in expected.items():
        np.testing.assert_allclose(served[task].numpy(), to_numpy(value),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("non_finite", ["skip", "apply"])
def test_terminate_on_nan_keeps_working(non_finite):
    x, y = make_data(32)
    y["reg"][20] = np.inf  # The second batch of 16 has an inf loss.
    model = compiled("mgda", non_finite=non_finite)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                        shuffle=False,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1
    assert model.stop_training


def _all_aggregators():
    from keras_mtl.aggregators import ALL_AGGREGATORS

    return rules_for_backend(set(ALL_AGGREGATORS) - {"constant"})


@pytest.mark.parametrize("name", _all_aggregators())
def test_every_aggregator_trains_without_shared_variables(name):
    """`shared_variables=[]` and a one-task model: each head gets its own
    gradient, with at most one warning."""
    import warnings

    from keras_mtl.aggregators import get

    x, y = make_data(16)
    for model, losses in (
        (mtl_model(shared_variables=[]), LOSSES),
        (mtl_model(tasks=("reg",)), {"reg": "mse"}),
    ):
        if name in ("krum", "trimmed_mean") and len(losses) < 3:
            # They need three tasks, and say so at compile.
            with pytest.raises(ValueError, match="needs at least 3 tasks"):
                model.compile("sgd", loss=losses, aggregator=get(name))
            continue
        # Eager: one step each (test_exact_resume.py runs every rule traced).
        model.compile(keras.optimizers.SGD(0.1), loss=losses,
                      aggregator=get(name), run_eagerly=True)
        head = model.get_layer("head_reg").kernel
        before = to_numpy(head)
        labels = {t: y[t] for t in losses}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            logs = model.train_on_batch(x, labels, return_dict=True)
        ours = [w for w in caught if "keras_mtl" in str(w.filename)
                or "shared" in str(w.message)]
        assert len(ours) <= 1, [str(w.message) for w in ours]
        assert np.isfinite(logs["loss"])
        assert not np.array_equal(to_numpy(head), before)


def test_a_refused_compile_changes_nothing():
    from keras_mtl.aggregators import ALL_AGGREGATORS

    name = next(n for n, cls in sorted(ALL_AGGREGATORS.items())
                if getattr(cls, "tracks_gradients", False))
    x, y = make_data(32)
    model = compiled("mgda")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    optimizer, balancer = model.optimizer, model.balancer
    with pytest.raises(ValueError, match="per-parameter state"):
        model.compile("sgd", loss=LOSSES, aggregator=name,
                      gradient_mode="features", features="features")
    assert model.optimizer is optimizer and model.balancer is balancer
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize("aggregator", ["mgda", "modo"])
def test_a_skipped_step_leaves_the_logged_weights_finite(aggregator):
    # The second batch holds an inf: its weights (NaN) are not averaged
    # into the epoch's logged weights, which are the first batch's.
    x, y = make_data(32)
    x_bad = x.copy()
    x_bad[20, 0] = np.inf
    first = compiled(aggregator)
    logs = first.fit(x[:16], {t: v[:16] for t, v in y.items()},
                     batch_size=16, epochs=1, shuffle=False,
                     verbose=0).history
    model = compiled(aggregator)
    history = model.fit(x_bad, y, batch_size=16, epochs=1, shuffle=False,
                        verbose=0).history
    assert history["skipped_steps"] == [1.0]
    for task in ("reg", "cls", "bin"):
        np.testing.assert_allclose(history[f"{task}_weight"],
                                   logs[f"{task}_weight"], rtol=1e-5)
