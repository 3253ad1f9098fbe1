"""Task vectors, task arithmetic and aTLAS (`TaskVectorComposition`)."""

import os

import keras
import numpy as np
import pytest

from tests.transfer.builders import bert_inputs
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer

BACKEND = keras.backend.backend()


def dense_model(seed=0, dropout=False, norm=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((4,)), keras.layers.Dense(5, activation="tanh")]
    if norm:
        layers.append(keras.layers.BatchNormalization())
    if dropout:
        layers.append(keras.layers.Dropout(0.3, seed=1))
    layers.append(keras.layers.Dense(2))
    return keras.Sequential(layers)


def twin(model, shift_seed=None, scale=0.3):
    """A copy of `model` (same layer names); weights shifted at random."""
    copy = keras.models.clone_model(model)
    weights = model.get_weights()
    if shift_seed is not None:
        rng = np.random.default_rng(shift_seed)
        weights = [w + scale * rng.normal(size=w.shape).astype(w.dtype)
                   for w in weights]
    copy.set_weights(weights)
    return copy


def to_numpy(values):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in values]


def predict(model, x):
    return model.predict(x, verbose=0)


X = np.random.default_rng(1).normal(size=(16, 4)).astype("float32")


def test_task_vector_is_the_weight_difference_and_combines_like_a_vector():
    pre = dense_model()
    tuned_a, tuned_b = twin(pre, 1), twin(pre, 2)
    tau_a = transfer.task_vector(tuned_a, pre)
    tau_b = transfer.task_vector(tuned_b, pre)
    base = pre.get_weights()
    diff_a = [a - b for a, b in zip(tuned_a.get_weights(), base)]
    diff_b = [a - b for a, b in zip(tuned_b.get_weights(), base)]
    names = [layer.name for layer in pre.layers]
    assert tau_a.keys == [f"{n}/{w}" for n in names for w in ("kernel", "bias")]
    assert tau_a.num_parameters == sum(w.size for w in base)
    cases = {
        "a": (tau_a, diff_a),
        "a+b": (tau_a + tau_b, [a + b for a, b in zip(diff_a, diff_b)]),
        "a-b": (tau_a - tau_b, [a - b for a, b in zip(diff_a, diff_b)]),
        "-a": (-tau_a, [-a for a in diff_a]),
        "0.5a": (0.5 * tau_a, [0.5 * a for a in diff_a]),
        "a*-2": (tau_a * -2, [-2 * a for a in diff_a]),
        "sum": (sum([tau_a, tau_b, tau_a]),
                [2 * a + b for a, b in zip(diff_a, diff_b)]),
    }
    for name, (vector, expected) in cases.items():
        for key, want in zip(vector.keys, expected):
            np.testing.assert_allclose(vector[key], want, atol=1e-6,
                                       err_msg=name)
    norm = np.sqrt(sum(np.sum(np.square(d, dtype="float64")) for d in diff_a))
    np.testing.assert_allclose(tau_a.norm(), norm, rtol=1e-6)


def test_task_arithmetic_adds_the_scaled_sum_in_place():
    pre = dense_model()
    tau_a = transfer.task_vector(twin(pre, 1), pre)
    tau_b = transfer.task_vector(twin(pre, 2), pre)
    model = twin(pre)
    returned = transfer.task_arithmetic(model, [tau_a, tau_b], 0.4)
    assert returned is model
    for key, got, base in zip(tau_a.keys, model.get_weights(),
                              pre.get_weights()):
        want = base + 0.4 * (tau_a[key].astype("float64") + tau_b[key])
        np.testing.assert_allclose(got, want, atol=1e-6)
    # Negation undoes the addition.
    transfer.task_arithmetic(model, [-tau_a, -tau_b], 0.4)
    for got, base in zip(model.get_weights(), pre.get_weights()):
        np.testing.assert_allclose(got, base, atol=1e-6)


def test_models_with_other_layer_names_are_matched_by_position():
    pre = dense_model(seed=0)
    other = dense_model(seed=3)  # same shapes, new automatic layer names
    assert [v.path for v in other.weights] != [v.path for v in pre.weights]
    tau = transfer.task_vector(other, pre)
    for got, a, b in zip(tau.keys, other.get_weights(), pre.get_weights()):
        np.testing.assert_allclose(tau[got], a - b, atol=1e-6)
    target = dense_model(seed=4)
    before = target.get_weights()
    tau.apply_to(target, 1.0)
    for got, start, d in zip(target.get_weights(), before, tau.keys):
        np.testing.assert_allclose(got, start + tau[d], atol=1e-6)


def test_mismatches_raise_before_any_weight_changes():
    pre = dense_model()
    tau = transfer.task_vector(twin(pre, 1), pre)
    keras.utils.set_random_seed(0)
    wider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6),
                              keras.layers.Dense(2)])
    before = wider.get_weights()
    with pytest.raises(ValueError, match="does not have the task vector"):
        tau.apply_to(wider)
    for got, want in zip(wider.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="pre_trained"):
        transfer.task_vector(wider, pre)
    other = transfer.task_vector(wider, twin(wider, 1))
    with pytest.raises(ValueError, match="different models"):
        tau + other
    with pytest.raises(ValueError, match="scaling_coef"):
        tau.apply_to(twin(pre), float("nan"))
    with pytest.raises(ValueError, match="finite real"):
        tau * float("inf")
    with pytest.raises(ValueError, match="task_vectors"):
        transfer.task_arithmetic(pre, [])
    with pytest.raises(ValueError, match="built"):
        transfer.task_vector(keras.Sequential([keras.layers.Dense(2)]), pre)
    with pytest.raises(ValueError, match="deltas"):
        transfer.TaskVector({})
    with pytest.raises(ValueError, match="not finite"):
        transfer.TaskVector({"w": np.array([np.nan])})


def test_trainable_only_leaves_out_frozen_variables():
    pre = dense_model(norm=True)
    tuned = twin(pre, 1)
    tau = transfer.task_vector(tuned, pre, trainable_only=True)
    assert not any("moving" in key for key in tau.keys)
    assert any("moving" in key for key in transfer.task_vector(tuned, pre))


def test_save_and_load_round_trip(tmp_path):
    pre = dense_model()
    tau = transfer.task_vector(twin(pre, 1), pre)
    path = os.path.join(tmp_path, "tau.npz")
    tau.save(path)
    loaded = transfer.TaskVector.load(path)
    assert loaded.keys == tau.keys
    for key in tau:
        np.testing.assert_array_equal(loaded[key], tau[key])
    bad = os.path.join(tmp_path, "bad.npz")
    np.savez(bad, x=np.zeros(2))
    with pytest.raises(ValueError, match="not a task vector file"):
        transfer.TaskVector.load(bad)


def composed_reference(pre, vectors, coefficients, blocks="variable"):
    """float64 `theta_0 + sum_i lambda_ij tau_ij`, one array per variable."""
    weights = []
    for j, (key, base) in enumerate(zip(vectors[0].keys, pre.get_weights())):
        value = base.astype("float64")
        for i, vector in enumerate(vectors):
            column = j if blocks == "variable" else 0
            value = value + coefficients[i, column] * vector[key]
        weights.append(value)
    return weights


@pytest.mark.parametrize("blocks", ["variable", "model"])
def test_composition_runs_the_model_at_the_composed_weights(blocks):
    pre = dense_model()
    vectors = [transfer.task_vector(twin(pre, s), pre) for s in (1, 2, 3)]
    atlas = transfer.TaskVectorComposition(pre, vectors, blocks=blocks)
    assert atlas.num_coefficients == 3 * (4 if blocks == "variable" else 1)
    np.testing.assert_allclose(predict(atlas, X), predict(twin(pre), X),
                               atol=1e-6)
    rng = np.random.default_rng(5)
    coefficients = rng.normal(size=atlas.coefficients.shape)
    atlas.coefficients.assign(coefficients.astype("float32"))
    reference = twin(pre)
    reference.set_weights(composed_reference(pre, vectors, coefficients,
                                             blocks))
    np.testing.assert_allclose(predict(atlas, X), predict(reference, X),
                               atol=1e-5)
    # The frozen model keeps theta_0.
    for got, want in zip(pre.get_weights(), twin(pre).get_weights()):
        np.testing.assert_array_equal(got, want)


def test_all_coefficients_one_equals_task_arithmetic_on_a_keras_hub_backbone():
    pre = tiny_bert()
    inputs = bert_inputs()

    def shifted(seed):
        copy = pre.__class__.from_config(pre.get_config())
        rng = np.random.default_rng(seed)
        copy.set_weights([w + 0.05 * rng.normal(size=w.shape).astype(w.dtype)
                          for w in pre.get_weights()])
        return copy

    vectors = [transfer.task_vector(shifted(s), pre) for s in (1, 2)]
    num_blocks = len(vectors[0])
    assert num_blocks == len(pre.weights)
    before = pre.predict(inputs, verbose=0)
    atlas = transfer.TaskVectorComposition(pre, vectors)
    assert atlas.num_coefficients == 2 * num_blocks
    at_zero = atlas.predict(inputs, verbose=0)
    for key in before:
        np.testing.assert_allclose(at_zero[key], before[key], atol=1e-5)
    atlas.coefficients.assign(np.ones(atlas.coefficients.shape, "float32"))
    arithmetic = pre.__class__.from_config(pre.get_config())
    arithmetic.set_weights(pre.get_weights())
    transfer.task_arithmetic(arithmetic, vectors, 1.0)
    want = arithmetic.predict(inputs, verbose=0)
    got = atlas.predict(inputs, verbose=0)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-4)


def linear_gradient(pre, vectors, x, y, blocks):
    """float64 gradient of the mean squared error of `x W + b` (at theta_0)
    with respect to the coefficients: `<dL/dtheta_j, tau_ij>`."""
    kernel, bias = [w.astype("float64") for w in pre.get_weights()]
    residual = x.astype("float64") @ kernel + bias - y
    scale = 2.0 / residual.size
    grads = [scale * x.T.astype("float64") @ residual,
             scale * residual.sum(axis=0)]
    out = np.zeros((len(vectors), 2 if blocks == "variable" else 1))
    for i, vector in enumerate(vectors):
        for j, (key, grad) in enumerate(zip(vector.keys, grads)):
            out[i, j if blocks == "variable" else 0] += np.sum(
                grad * vector[key])
    return out


@pytest.mark.parametrize("blocks", ["variable", "model"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_coefficient_gradient_matches_the_closed_form(blocks, jit_compile):
    keras.utils.set_random_seed(0)
    pre = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    vectors = [transfer.task_vector(twin(pre, s), pre) for s in (1, 2)]
    y = np.random.default_rng(7).normal(size=(16, 3))
    atlas = transfer.TaskVectorComposition(pre, vectors, blocks=blocks)
    atlas.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse",
                  jit_compile=jit_compile)
    atlas.fit(X, y.astype("float32"), batch_size=16, epochs=1, verbose=0)
    got = -np.asarray(keras.ops.convert_to_numpy(atlas.coefficients))
    want = linear_gradient(pre, vectors, X, y, blocks)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_only_the_coefficients_train_and_dropout_state_moves_on():
    pre = dense_model(dropout=True, norm=True)
    vectors = [transfer.task_vector(twin(pre, s), pre) for s in (1, 2)]
    frozen = [w.copy() for w in pre.get_weights()]
    atlas = transfer.TaskVectorComposition(pre, vectors)
    stored = to_numpy(atlas.vectors[0])
    assert [v.path for v in atlas.trainable_variables] == [
        atlas.coefficients.path]
    seeds = [v for v in pre.variables if "seed" in v.path]
    assert seeds
    seed_before = to_numpy(seeds)
    atlas.compile(optimizer="adam", loss="mse")
    y = np.random.default_rng(2).normal(size=(16, 2)).astype("float32")
    atlas.fit(X, y, batch_size=8, epochs=2, verbose=0)
    for got, want in zip(pre.get_weights(), frozen):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(to_numpy(atlas.vectors[0]), stored):
        np.testing.assert_array_equal(got, want)
    assert np.all(to_numpy([atlas.coefficients])[0] != 0)
    assert any(np.any(a != b) for a, b in zip(to_numpy(seeds), seed_before))


def test_keras_round_trip_and_merge(tmp_path):
    pre = dense_model()
    vectors = [transfer.task_vector(twin(pre, s), pre) for s in (1, 2)]
    atlas = transfer.TaskVectorComposition(pre, vectors)
    coefficients = np.random.default_rng(3).normal(
        size=atlas.coefficients.shape).astype("float32")
    atlas.coefficients.assign(coefficients)
    want = predict(atlas, X)
    path = os.path.join(tmp_path, "atlas.keras")
    atlas.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, transfer.TaskVectorComposition)
    np.testing.assert_allclose(predict(loaded, X), want, atol=1e-6)
    np.testing.assert_array_equal(to_numpy([loaded.coefficients])[0],
                                  coefficients)
    merged = atlas.merge()
    assert merged is pre
    np.testing.assert_allclose(predict(pre, X), want, atol=1e-5)
    np.testing.assert_allclose(predict(atlas, X), want, atol=1e-5)
    assert not np.any(to_numpy([atlas.coefficients])[0])


def test_learn_task_vector_scaling_recovers_a_known_combination():
    pre = dense_model()
    tau_a = transfer.task_vector(twin(pre, 1), pre)
    tau_b = transfer.task_vector(twin(pre, 2), pre)
    target = twin(pre)
    transfer.task_arithmetic(target, [0.8 * tau_a], 1.0)
    x = np.random.default_rng(4).normal(size=(256, 4)).astype("float32")
    y = predict(target, x)
    loss_before = np.mean((predict(pre, x) - y) ** 2)
    atlas = transfer.learn_task_vector_scaling(
        pre, [tau_a, tau_b], x, y, loss="mse", blocks="model",
        optimizer=keras.optimizers.Adam(0.05), epochs=30, batch_size=64,
        verbose=0, merge=True)
    loss_after = np.mean((predict(pre, x) - y) ** 2)
    assert loss_after < 0.05 * loss_before
    assert atlas.history.history["loss"][-1] < atlas.history.history[
        "loss"][0]


def test_composition_argument_errors_leave_the_model_untouched():
    pre = dense_model()
    tau = transfer.task_vector(twin(pre, 1), pre)
    for kwargs, match in (
        ({"blocks": "layer"}, "blocks"),
        ({"initial_coefficient": float("nan")}, "initial_coefficient"),
    ):
        with pytest.raises(ValueError, match=match):
            transfer.TaskVectorComposition(pre, [tau], **kwargs)
        assert pre.trainable
    with pytest.raises(ValueError, match="task_vectors"):
        transfer.TaskVectorComposition(pre, [])
    keras.utils.set_random_seed(0)
    wider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6),
                              keras.layers.Dense(2)])
    other = transfer.task_vector(twin(wider, 1), wider)
    with pytest.raises(ValueError, match="one architecture"):
        transfer.TaskVectorComposition(pre, [tau, other])
    with pytest.raises(ValueError, match="loss"):
        transfer.learn_task_vector_scaling(pre, [tau], X)
    with pytest.raises(ValueError, match="epochs"):
        transfer.learn_task_vector_scaling(pre, [tau], X, loss="mse",
                                           epochs=0)
    assert pre.trainable
