"""`compile(gradient_mode="gramian")`: a Gramian rule's step from the rows'
Gramian, computed one column at a time without the `T x P` Jacobian, then
one backward pass of the weighted loss. It must train exactly as parameter
mode does."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_mtl
from keras_mtl.src.models.balancer import Balancer
from keras_mtl.src.models.gradient_plan import check_replicas
from tests.helpers import BACKEND
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import to_numpy


def _train(make_model, mode, aggregator, x, y, epochs=2, **compile_args):
    model = make_model()
    optimizer = compile_args.pop("optimizer", "sgd")
    optimizer = (keras.optimizers.SGD(0.1) if optimizer == "sgd"
                 else keras.optimizers.Adam(1e-2))
    model.compile(optimizer, loss=compile_args.pop(
        "loss", LOSSES), aggregator=aggregator, gradient_mode=mode,
        **compile_args)
    history = model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False,
                        verbose=0)
    return model, history.history


def _train_counting_gramians(make_model, aggregator, x, y, **compile_args):
    """`_train` in Gramian mode, checking that its steps formed the
    Gramian from columns (not a silent parameter-mode step)."""
    calls = []
    original = Balancer.gramian_weights

    def counted(self, columns, *args, **kwargs):
        calls.append(len(columns))
        return original(self, columns, *args, **kwargs)

    Balancer.gramian_weights = counted
    try:
        model, logs = _train(make_model, "gramian", aggregator, x, y,
                             **compile_args)
    finally:
        Balancer.gramian_weights = original
    assert calls, "the Gramian-mode step never formed the Gramian"
    return model, logs


def _assert_same_training(make_model, aggregator, x, y, **compile_args):
    parameters, logs_p = _train(make_model, "parameters", aggregator, x, y,
                                **dict(compile_args))
    gramian, logs_g = _train_counting_gramians(
        make_model, aggregator, x, y, **dict(compile_args))
    for a, b in zip(parameters.trainable_variables,
                    gramian.trainable_variables):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-4,
                                   atol=1e-5, err_msg=a.path)
    weight_logs = [k for k in logs_p if k.endswith("_weight")]
    assert weight_logs
    for key in weight_logs:
        np.testing.assert_allclose(logs_g[key], logs_p[key], rtol=1e-4,
                                   atol=1e-6, err_msg=key)
    return gramian


# Stateless and warm-started (state); compiled where the backend compiles
# by default. Nash-MTL's fixed point runs in `test_mixed_precision.py`.
@pytest.mark.parametrize("aggregator", ["upgrad", "mgda", "cagrad"])
def test_gramian_mode_trains_as_parameter_mode(aggregator):
    x, y = make_data(64)
    _assert_same_training(mtl_model, aggregator, x, y)


@pytest.mark.parametrize("aggregator, compile_args", [
    ("modo", {}),  # Rows of independent parts of the batch.
    ("mgda", {"task_groups": [["reg", "cls"], ["bin"]]}),
])
def test_gramian_mode_with_parts_of_the_batch_and_task_groups(
        aggregator, compile_args):
    x, y = make_data(64)
    _assert_same_training(mtl_model, aggregator, x, y, epochs=1,
                          **compile_args)


@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="PyTorch steps eagerly; eager JAX compiles every "
                    "operation (CI time) and runs the same code as its jit")
def test_gramian_mode_eager_step():
    x, y = make_data(32)
    _assert_same_training(mtl_model, "aligned_mtl", x, y, epochs=1,
                          jit_compile=False)


def test_gramian_mode_with_a_layer_gramian_and_regularisation():
    """GradNorm balancing one layer reads that layer's own Gramian; an L2
    regulariser's gradient is added to the direction, not balanced."""
    def regularised():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, activation="tanh", name="trunk_1",
                               kernel_regularizer="l2")(inputs)
        z = keras.layers.Dense(8, activation="tanh", name="features")(h)
        units = {"reg": 1, "cls": 3, "bin": 1}
        return keras_mtl.MultiTaskModel(inputs, {
            t: keras.layers.Dense(u, name=f"head_{t}")(z)
            for t, u in units.items()})

    x, y = make_data(64)
    rule = keras_mtl.aggregators.GradNorm(layer="features",
                                          initial_loss="first_step")
    model = _assert_same_training(regularised, rule, x, y,
                                  weight_task_specific=True)
    assert model.balancer.state  # GradNorm's state moved with the steps.


def _transformer():
    """Embedding, attention, layer normalisation: the layers of a
    transformer trunk (an embedding's gradient is sparse on TensorFlow;
    PyTorch's fused attention has no second derivative)."""
    keras.utils.set_random_seed(3)
    tokens = keras.Input((5,), dtype="int32")
    h = keras_hub.layers.TokenAndPositionEmbedding(20, 5, 16)(tokens)
    h = keras_hub.layers.TransformerEncoder(32, 2)(h)
    z = keras.layers.GlobalAveragePooling1D()(h)
    return keras_mtl.MultiTaskModel(tokens, {
        "a": keras.layers.Dense(1, name="a")(z),
        "b": keras.layers.Dense(1, name="b")(z),
        "c": keras.layers.Dense(1, name="c")(z),
    })


def test_gramian_mode_on_a_transformer_trunk():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (32, 5)).astype("int32")
    y = {t: rng.normal(size=(32, 1)).astype("float32") for t in "abc"}
    # Adam: an embedding's direction must reach it dense, as in parameter
    # mode (TensorFlow's IndexedSlices would make a sparse Adam update).
    _assert_same_training(_transformer, "upgrad", x, y, epochs=1,
                          loss={t: "mse" for t in "abc"}, optimizer="adam")


def _with_a_bad_trunk(cause):
    """A trunk whose gradient is NaN while every loss is finite: through
    `sqrt(|h|)` at `h = 0` (a zero input row), or through the same
    function as the regulariser of a zero kernel."""
    def make():
        keras.utils.set_random_seed(2)
        inputs = keras.Input((6,))
        root = lambda t: keras.ops.sqrt(keras.ops.abs(t))  # noqa: E731
        if cause == "regulariser":
            h = keras.layers.Dense(
                8, kernel_initializer="zeros", name="trunk",
                kernel_regularizer=lambda w: keras.ops.sum(root(w)))(inputs)
        else:
            h = keras.layers.Dense(8, use_bias=False, name="trunk")(inputs)
            h = keras.layers.Lambda(root)(h)
        return keras_mtl.MultiTaskModel(inputs, {
            t: keras.layers.Dense(u, name=f"head_{t}")(h)
            for t, u in {"reg": 1, "cls": 3, "bin": 1}.items()})
    return make


@pytest.mark.parametrize("cause", ["gradient", "regulariser"])
def test_gramian_mode_skips_a_step_with_finite_losses_and_nan_gradients(
        cause):
    """The skip decision reads the Gramian and the regulariser's gradient
    (on TensorFlow the weighted backward pass runs only inside the skip's
    conditional, after the decision)."""
    x, y = make_data(16)
    x[3] = 0.0
    model = _with_a_bad_trunk(cause)()
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES,
                  aggregator="upgrad", gradient_mode="gramian")
    model.build(x.shape)
    model.optimizer.build(model.trainable_variables)
    before = [to_numpy(v) for v in model.variables + model.optimizer.variables]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.all(np.isfinite([logs[f"{t}_loss"] for t in LOSSES]))
    assert logs["skipped_steps"] == 1.0
    after = [to_numpy(v) for v in model.variables + model.optimizer.variables]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    if cause == "gradient":
        logs = model.train_on_batch(x[4:], {t: v[4:] for t, v in y.items()},
                                    return_dict=True)
        assert logs["skipped_steps"] == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"aggregator": "graddrop"}, "reads the gradients"),
    ({"aggregator": "mgda", "aggregation_groups": "layer"},
     "aggregation_groups"),
    ({"aggregator": "mgda", "sharpness": "task"}, "sharpness"),
])
def test_rules_and_options_that_need_the_jacobian_are_refused(kwargs,
                                                               message):
    model = mtl_model()
    model.compile("sgd", loss=LOSSES, aggregator="upgrad")
    with pytest.raises(ValueError, match=message) as info:
        model.compile("sgd", loss=LOSSES, gradient_mode="gramian", **kwargs)
    assert "gramian" in str(info.value)
    # The failed compile left the model as it was.
    assert model.balancer.aggregator.name == "upgrad"
    assert model.balancer.gradient_mode == "parameters"


def test_a_loss_only_rule_runs_its_usual_step():
    x, y = make_data(32)
    model = mtl_model()
    model.compile("sgd", loss=LOSSES, aggregator="dwa",
                  gradient_mode="gramian")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.gradient_plan().mode == "losses"


def test_gramian_mode_is_saved_with_the_model(tmp_path):
    x, y = make_data(32)
    model, _ = _train(mtl_model, "gramian", "mgda", x, y, epochs=1)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.balancer.gradient_mode == "gramian"
    np.testing.assert_allclose(
        to_numpy(loaded.balancer.state["weights"]),
        to_numpy(model.balancer.state["weights"]))
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_several_replicas_are_refused():
    check_replicas("gramian", 1)
    check_replicas("parameters", 4)
    with pytest.raises(ValueError, match="Received: 2 replicas"):
        check_replicas("gramian", 2)


def test_conflict_monitor_reads_the_same_gramian():
    x, y = make_data(32)
    logs = {}
    for mode in ("parameters", "gramian"):
        model = mtl_model()
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                      aggregator="upgrad", gradient_mode=mode)
        history = model.fit(
            x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
            callbacks=[keras_mtl.callbacks.ConflictMonitor()])
        logs[mode] = {k: v[-1] for k, v in history.history.items()}
    assert "cos_reg_cls" in logs["gramian"]
    assert logs["gramian"].keys() == logs["parameters"].keys()
    for key, value in logs["parameters"].items():
        np.testing.assert_allclose(logs["gramian"][key], value, rtol=1e-4,
                                   atol=1e-6, err_msg=key)
