"""The engine's per-task gradients and aggregated steps, on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mtl
from tests.helpers import BACKEND
from tests.helpers import LOSSES
from tests.helpers import functional_parts
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import per_task_gradients
from tests.helpers import to_numpy

TASKS = ("reg", "cls", "bin")


class JacobianRecorder(keras_mtl.aggregators.Aggregator):
    """Returns the sum and keeps the Jacobian it was given in its state."""

    def __init__(self, num_params, name=None):
        super().__init__(name=name)
        self.num_params = num_params

    def initial_state(self, num_tasks, num_params=None):
        return {"jacobian": ops.zeros((num_tasks, self.num_params))}

    def aggregate(self, jacobian, losses=None, state=None, seed=None):
        weights = ops.ones((jacobian.shape[0],))
        return ops.sum(jacobian, axis=0), weights, {"jacobian": jacobian}

    def get_config(self):
        return {**super().get_config(), "num_params": self.num_params}


def flat_jacobian(reference, variables, tasks):
    return np.stack(
        [
            np.concatenate([reference[t][v.path].ravel() for v in variables])
            for t in tasks
        ]
    )


@pytest.mark.parametrize("vectorize", [False, True])
def test_engine_jacobian_equals_separate_task_gradients(vectorize):
    x, y = make_data(32)
    model = mtl_model()
    reference = per_task_gradients(model, x, y, TASKS)
    num_params = sum(int(np.prod(v.shape)) for v in model.shared_variables)
    model.compile(
        keras.optimizers.SGD(0.0),
        loss=LOSSES,
        aggregator=JacobianRecorder(num_params),
        vectorize=vectorize,
    )
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    recorded = to_numpy(model.balancer.state["jacobian"])
    expected = flat_jacobian(reference, model.shared_variables, TASKS)
    np.testing.assert_allclose(recorded, expected, rtol=1e-4, atol=1e-6)


class GramianRecorder(keras_mtl.aggregators.Weighting):
    """Returns equal weights and keeps the Gramians it was given."""

    gramian_layer = "features"  # Also asks for this layer's Gramian alone.

    def initial_state(self, num_tasks, num_params=None):
        zeros = ops.zeros((num_tasks, num_tasks))
        return {"gramian": zeros, "layer": zeros}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        recorded = {"gramian": gramian, "layer": state["layer_gramian"]}
        return ops.ones((num_tasks,)), recorded


def test_engine_gramians_equal_separate_task_gradients():
    """The Gramian of all shared variables and of one layer's, as a Weighting
    receives them (on PyTorch, read from the one (T, P) Jacobian)."""
    x, y = make_data(32)
    model = mtl_model()
    reference = per_task_gradients(model, x, y, TASKS)
    model.compile(keras.optimizers.SGD(0.0), loss=LOSSES,
                  aggregator=GramianRecorder())
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    jacobian = flat_jacobian(reference, model.shared_variables, TASKS)
    layer = [
        v for v in model.shared_variables if v.path.startswith("features/")
    ]
    layer_jacobian = flat_jacobian(reference, layer, TASKS)
    state = {k: to_numpy(v) for k, v in model.balancer.state.items()}
    np.testing.assert_allclose(state["gramian"], jacobian @ jacobian.T,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state["layer"],
                               layer_jacobian @ layer_jacobian.T,
                               rtol=1e-4, atol=1e-6)


def test_shared_and_task_specific_variables_found_from_graph():
    model = mtl_model()
    assert [v.path for v in model.shared_variables] == [
        "trunk_1/kernel",
        "trunk_1/bias",
        "features/kernel",
        "features/bias",
    ]
    specific = model.task_specific_variables
    assert [v.path for v in specific["cls"]] == [
        "head_cls/kernel",
        "head_cls/bias",
    ]


def test_mmoe_style_graph_gates_are_task_specific():
    keras.utils.set_random_seed(0)
    x = keras.Input((4,))
    experts = [keras.layers.Dense(3, name=f"expert_{i}")(x) for i in range(2)]
    stacked = keras.layers.Lambda(lambda e: ops.stack(e, axis=1))(experts)
    outputs = {}
    for task in ("a", "b"):
        gate = keras.layers.Dense(
            2, activation="softmax", name=f"gate_{task}"
        )(x)
        mixed = keras.layers.Lambda(
            lambda t: ops.einsum("be,bed->bd", t[0], t[1])
        )([gate, stacked])
        outputs[task] = keras.layers.Dense(1, name=f"tower_{task}")(mixed)
    model = keras_mtl.MultiTaskModel(x, outputs)
    assert sorted(v.path for v in model.shared_variables) == sorted(
        f"expert_{i}/{w}" for i in range(2) for w in ("kernel", "bias")
    )
    assert {v.path for v in model.task_specific_variables["a"]} == {
        "gate_a/kernel", "gate_a/bias", "tower_a/kernel", "tower_a/bias"}


def test_shared_variables_override():
    model = mtl_model(shared_variables=["features/kernel", "features/bias"])
    assert [v.path for v in model.shared_variables] == [
        "features/kernel",
        "features/bias",
    ]
    with pytest.raises(ValueError, match="Unknown variable path"):
        mtl_model(shared_variables=["nope/kernel"])


@pytest.mark.parametrize(
    "aggregator",
    [
        keras_mtl.aggregators.Sum(),
        keras_mtl.aggregators.Mean(),
        keras_mtl.aggregators.MGDA(),
        keras_mtl.aggregators.PCGrad(shuffle=False),
    ],
    ids=lambda a: type(a).__name__,
)
@pytest.mark.parametrize("weight_task_specific", [False, True])
def test_step_matches_aggregated_direction(aggregator, weight_task_specific):
    """One SGD(lr=1) step moves the weights by minus the aggregated
    direction."""
    x, y = make_data(32)
    model = mtl_model()
    reference = per_task_gradients(model, x, y, TASKS)
    shared = model.shared_variables
    jacobian = flat_jacobian(reference, shared, TASKS)
    losses = None
    direction, weights, _ = aggregator.aggregate(jacobian, losses)
    direction, weights = to_numpy(direction), to_numpy(weights)
    start = {v.path: to_numpy(v) for v in model.trainable_variables}

    model.compile(
        keras.optimizers.SGD(1.0),
        loss=LOSSES,
        aggregator=aggregator,
        weight_task_specific=weight_task_specific,
    )
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    moved = {
        v.path: start[v.path] - to_numpy(v) for v in model.trainable_variables
    }
    got = np.concatenate([moved[v.path].ravel() for v in shared])
    np.testing.assert_allclose(got, direction, rtol=2e-4, atol=1e-6)
    loss_only = not aggregator.requires_jacobian
    for t, task in enumerate(TASKS):
        scale = weights[t] if (weight_task_specific or loss_only) else 1.0
        for v in model.task_specific_variables[task]:
            np.testing.assert_allclose(
                moved[v.path], scale * reference[task][v.path],
                rtol=2e-4, atol=1e-6,
            )


def test_sum_matches_plain_keras_multi_output_training():
    x, y = make_data(96)
    inputs, outputs = functional_parts(seed=3)
    plain = keras.Model(inputs, outputs)
    model = mtl_model(seed=3)
    model.set_weights(plain.get_weights())
    plain.compile(keras.optimizers.Adam(1e-2), loss=LOSSES)
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES, aggregator="sum")
    h1 = plain.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    h2 = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    for a, b in zip(plain.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for task in TASKS:
        np.testing.assert_allclose(
            h1.history[f"{task}_loss"], h2.history[f"{task}_loss"], rtol=1e-5
        )
    np.testing.assert_allclose(
        h1.history["loss"], h2.history["loss"], rtol=1e-5
    )


@pytest.mark.parametrize("aggregator", ["sum", "mgda", "pcgrad_fixed_order"])
@pytest.mark.parametrize("gradient_mode", ["parameters", "features"])
def test_eager_and_compiled_steps_agree(aggregator, gradient_mode):
    # Random streams may differ between eager and XLA kernels, so PCGrad's
    # visiting order is fixed here; its seeding is tested separately.
    if aggregator == "pcgrad_fixed_order":
        aggregator = keras_mtl.aggregators.PCGrad(shuffle=False)
    if BACKEND == "torch":
        pytest.skip("PyTorch trains eagerly; torch.compile is not supported.")
    x, y = make_data(64)
    results = []
    for eager in (True, False):
        model = mtl_model(seed=1)
        keras.utils.set_random_seed(7)
        model.compile(
            keras.optimizers.Adam(1e-2),
            loss=LOSSES,
            aggregator=aggregator,
            gradient_mode=gradient_mode,
            features="features",
            run_eagerly=eager,
            jit_compile=not eager,
        )
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        # The model's variables; the solver diagnostics (MGDA's iteration
        # count) may differ by a few iterations with the rounding.
        results.append(
            [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        )
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


class JacobianConstant(keras_mtl.aggregators.Weighting):
    """Fixed weights, but computed on the Jacobian path."""

    def __init__(self, weights, name=None):
        super().__init__(name=name)
        self.weights = list(weights)

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        return ops.convert_to_tensor(self.weights), state

    def get_config(self):
        return {**super().get_config(), "weights": self.weights}


def test_features_mode_equals_parameters_mode_for_linear_rules():
    x, y = make_data(64)
    results = []
    for mode in ("parameters", "features"):
        model = mtl_model(seed=2)
        model.compile(
            keras.optimizers.SGD(0.1),
            loss=LOSSES,
            aggregator=JacobianConstant([1.0, 0.5, 2.0]),
            gradient_mode=mode,
            features="features",
            weight_task_specific=True,
        )
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
        results.append(model.get_weights())
    reference = mtl_model(seed=2)
    reference.compile(
        keras.optimizers.SGD(0.1), loss=LOSSES, loss_weights={
            "reg": 1.0, "cls": 0.5, "bin": 2.0})
    reference.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    for a, b, c in zip(*results, reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradient_mode", ["parameters", "features"])
def test_regularization_losses_are_added_once(gradient_mode):
    x, y = make_data(32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    z = keras.layers.Dense(
        4, name="z", kernel_regularizer=keras.regularizers.L2(0.1)
    )(inputs)
    outputs = {
        t: keras.layers.Dense(
            1, name=t, kernel_regularizer=keras.regularizers.L2(0.2)
        )(z)
        for t in ("p", "q")
    }
    labels = {"p": y["reg"], "q": y["bin"]}
    plain = keras.Model(inputs, outputs)
    model = keras_mtl.MultiTaskModel(inputs, outputs)
    start = model.get_weights()
    plain.compile(keras.optimizers.SGD(0.5), loss="mse")
    plain.train_on_batch(x, labels)
    expected = plain.get_weights()
    model.set_weights(start)
    model.compile(
        keras.optimizers.SGD(0.5),
        loss="mse",
        aggregator=JacobianConstant([1.0, 1.0]),
        gradient_mode=gradient_mode,
        features="z",
    )
    logs = model.train_on_batch(x, labels, return_dict=True)
    reg = 0.1 * np.sum(start[0] ** 2) + 0.2 * (
        np.sum(start[2] ** 2) + np.sum(start[4] ** 2)
    )
    assert logs["loss"] == pytest.approx(
        logs["p_loss"] + logs["q_loss"] + reg, rel=1e-5
    )
    for a, b in zip(expected, model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class BackwardCounter(keras.layers.Layer):
    """Identity that counts how often its backward pass runs."""

    calls = {}

    @classmethod
    def count(cls, name):
        cls.calls[name] = cls.calls.get(name, 0) + 1

    def call(self, x):
        name = self.name

        @ops.custom_gradient
        def identity(x):
            def grad(*args, upstream=None):
                upstream = args[0] if upstream is None else upstream
                if BACKEND == "jax":  # Counts when the backward pass runs,
                    import jax  # not when JAX traces it.

                    jax.debug.callback(lambda: BackwardCounter.count(name))
                else:
                    BackwardCounter.count(name)
                return upstream

            return x, grad

        return identity(x)


@pytest.mark.parametrize("gradient_mode", ["parameters", "features"])
def test_task_gradient_skips_other_heads(gradient_mode):
    """A task's gradient runs the backward pass of its own head only.

    Differentiating entry t of the stacked loss vector would also carry zeros
    back through the T - 1 other heads: T + 1 backward passes of each head in
    a step instead of at most 2 (its own task's row, then the heads' update).
    """
    tasks = ("a", "b", "c", "d", "e")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    z = keras.layers.Dense(8, activation="tanh", name="features")(
        keras.layers.Dense(8, activation="tanh")(inputs)
    )
    outputs = {
        t: keras.layers.Dense(1)(BackwardCounter(name=f"count_{t}")(z))
        for t in tasks
    }
    model = keras_mtl.MultiTaskModel(
        inputs, outputs, gradient_mode=gradient_mode,
        features="features" if gradient_mode == "features" else None,
    )
    model.compile(
        keras.optimizers.SGD(0.01), loss={t: "mse" for t in tasks},
        aggregator="upgrad", run_eagerly=True,
    )
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    y = {t: np.ones((16, 1), "float32") for t in tasks}
    BackwardCounter.calls.clear()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert set(BackwardCounter.calls) == {f"count_{t}" for t in tasks}
    assert max(BackwardCounter.calls.values()) <= 2, BackwardCounter.calls
