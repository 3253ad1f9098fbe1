"""`MultiTaskTrainer` on models without a functional graph: subclassed
models, Sequential trunks and explicit shared variables."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import to_numpy

TASKS = ("reg", "cls", "bin")
UNITS = {"reg": 1, "cls": 3, "bin": 1}


class Subclassed(keras_mtl.MultiTaskTrainer, keras.Model):
    """The helpers' functional model, written as a subclass."""

    def __init__(self, trunk=None, **kwargs):
        super().__init__(**kwargs)
        self.trunk = trunk or keras.Sequential([
            keras.layers.Dense(8, activation="tanh", name="trunk_1"),
            keras.layers.Dense(8, activation="tanh", name="features"),
        ])
        self.heads = {
            t: keras.layers.Dense(UNITS[t], name=f"head_{t}") for t in TASKS
        }

    def call(self, x, training=False):
        z = self.trunk(x, training=training)
        return {t: head(z) for t, head in self.heads.items()}


def twin_models(seed=0):
    """A functional `MultiTaskModel` and a subclass with the same weights."""
    functional = mtl_model(seed=seed)
    subclassed = Subclassed()
    subclassed(np.zeros((2, 6), "float32"))
    by_name = {v.path.split("/")[-2] + "/" + v.path.split("/")[-1]: v
               for v in functional.weights}
    for v in subclassed.weights:
        key = "/".join(v.path.split("/")[-2:])
        v.assign(to_numpy(by_name[key]))
    return functional, subclassed


def compile_both(models, aggregator):
    for model in models:
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                      aggregator=aggregator, metrics={"reg": ["mae"]})


@pytest.mark.parametrize("aggregator", ["upgrad", "mgda", "sum", "famo"])
def test_subclassed_model_trains_like_the_functional_one(aggregator):
    x, y = make_data(32)
    functional, subclassed = twin_models()
    compile_both((functional, subclassed), aggregator)
    logs = []
    for model in (functional, subclassed):
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                            shuffle=False)
        logs.append(history.history)
    assert logs[0].keys() == logs[1].keys()
    expected = {"/".join(v.path.split("/")[-2:]): to_numpy(v)
                for v in functional.weights}
    for v in subclassed.weights:
        np.testing.assert_allclose(
            to_numpy(v), expected["/".join(v.path.split("/")[-2:])],
            rtol=1e-4, atol=1e-5)


def test_shared_variables_are_found_from_the_first_batch():
    x, y = make_data(32)
    model = Subclassed()
    model.compile("sgd", loss=LOSSES, aggregator="pcgrad")
    with pytest.raises(ValueError, match="first batch"):
        model.shared_variables
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    shared = sorted(v.path for v in model.shared_variables)
    trunk = sorted(v.path for v in model.trunk.trainable_weights)
    assert shared == trunk
    specific = model.task_specific_variables
    for task in TASKS:
        assert sorted(v.path for v in specific[task]) == sorted(
            v.path for v in model.heads[task].trainable_weights)


def test_explicit_shared_variables_of_a_subclass():
    x, y = make_data(32)
    model = Subclassed(shared_variables=[])
    model.compile("sgd", loss=LOSSES, aggregator="mgda")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.shared_variables == []


def test_a_call_that_does_not_return_the_tasks_is_refused():
    class Bad(keras_mtl.MultiTaskTrainer, keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    x, y = make_data(16)
    model = Bad()
    model.compile("sgd", loss=LOSSES, aggregator="pcgrad")
    with pytest.raises(ValueError, match="must return a dict"):
        model.fit(x, y, epochs=1, verbose=0)


def test_a_subclass_needs_a_loss_per_task():
    with pytest.raises(ValueError, match="loss=\\{task"):
        Subclassed().compile("sgd", loss="mse", aggregator="pcgrad")


@pytest.mark.parametrize("aggregator, vectorize", [
    ("mgda", False), ("pcgrad", True), ("upgrad", False)])
def test_features_mode_of_a_subclass_by_layer_name(aggregator, vectorize):
    """The features layer sits inside the subclass's Sequential trunk; the
    step must equal the functional model's features-mode step."""
    x, y = make_data(32)
    functional, subclassed = twin_models()
    for model in (functional, subclassed):
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                      aggregator=aggregator, gradient_mode="features",
                      features="features", vectorize=vectorize)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    expected = {"/".join(v.path.split("/")[-2:]): to_numpy(v)
                for v in functional.weights}
    for v in subclassed.weights:
        np.testing.assert_allclose(
            to_numpy(v), expected["/".join(v.path.split("/")[-2:])],
            rtol=1e-3, atol=1e-4)
    assert not np.allclose(
        to_numpy(subclassed.trunk.layers[0].kernel),
        to_numpy(twin_models()[1].trunk.layers[0].kernel))


def test_features_mode_of_a_subclass_rejects_bad_layers():
    x, y = make_data(32)
    model = Subclassed()
    with pytest.raises(ValueError, match="features='nope'"):
        model.compile("sgd", loss=LOSSES, aggregator="mgda",
                      gradient_mode="features", features="nope")
    # The second trunk layer is shared but downstream of "trunk_1".
    model.compile("sgd", loss=LOSSES, aggregator="mgda",
                  gradient_mode="features", features="trunk_1")
    before = [to_numpy(v) for v in model.weights]
    with pytest.raises(ValueError, match="upstream of the output of 'trunk_1'"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for v, value in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(v), value)
    np.asarray(to_numpy(model.predict(x, verbose=0)["reg"]))


def test_features_layer_called_twice_is_refused():
    class Twice(Subclassed):
        def call(self, x, training=False):
            z = self.trunk(x, training=training)
            z = self.trunk(x, training=training) + z
            return {t: head(z) for t, head in self.heads.items()}

    x, y = make_data(32)
    model = Twice()
    model.compile("sgd", loss=LOSSES, aggregator="mgda",
                  gradient_mode="features", features="features")
    with pytest.raises(ValueError, match="called again"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize("nested", ["list", "dict", "none"])
def test_a_task_output_must_be_one_tensor(nested):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3)(inputs)
    value = {"list": [h, h], "dict": {"p": h}, "none": None}[nested]
    with pytest.raises(ValueError, match="one output tensor"):
        keras_mtl.MultiTaskModel(inputs, {"a": value, "b": h})

    class Nested(keras_mtl.MultiTaskTrainer, keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            h = self.dense(x)
            return {"a": {"list": [h, h], "dict": {"p": h},
                          "none": None}[nested], "b": h}

    model = Nested()
    model.compile("sgd", loss={"a": "mse", "b": "mse"}, aggregator="mgda")
    x = np.zeros((8, 4), "float32")
    y = {"a": np.zeros((8, 1), "float32"), "b": np.zeros((8, 1), "float32")}
    with pytest.raises(ValueError, match="one output tensor"):
        model.fit(x, y, epochs=1, verbose=0)


def test_bad_shared_variables_fail_before_compile_changes_anything():
    x, y = make_data(32)
    model = Subclassed(shared_variables=["no/such/path"])
    model(x[:2])
    with pytest.raises(ValueError, match="Unknown variable path"):
        model.compile("sgd", loss=LOSSES, aggregator="mgda")
    assert model.balancer is None and not model.compiled
