"""The layers train inside keras_mtl.MultiTaskModel with a gradient-level
aggregator (PCGrad): the task losses fall, and the model saves and loads."""

import keras
import numpy as np
from keras import ops

import keras_mtl
from tests.layers.gate_checks import assert_keras_file_round_trip
from tests.layers.gate_checks import seeded

RNG = np.random.default_rng(0)
X = RNG.normal(size=(128, 6)).astype("float32")
W = RNG.normal(size=(6, 2)).astype("float32") / np.sqrt(3.0)


def dense(units, name, activation=None, seed=0):
    return keras.layers.Dense(units, activation=activation, name=name,
                              kernel_initializer=seeded(seed))


def all_layers_model():
    """A three-task model using every task layer: a shared trunk gated per
    task and conditioned on the task id, per-task refined field embeddings,
    a cross-stitch between the task branches, and a domain-adversarial
    task behind a gradient reversal."""
    x = keras.Input((6,))
    h = dense(16, "trunk", "tanh")(x)
    gate_a, gate_b = keras_mtl.layers.TaskGate(2, name="gate")(h)
    film = keras_mtl.layers.TaskConditioning(2, name="film")
    task_a = ops.cast(ops.zeros_like(x[:, 0]), "int32")
    film_a, film_b = film([gate_a, task_a]), film([gate_b, task_a + 1])
    fields = keras.layers.Reshape((6, 1))(x)
    embedded = dense(4, "field_embedding", "tanh", 1)(fields)
    refined_a, refined_b = keras_mtl.layers.TaskFeatureRefinement(
        2, reduction=2, kernel_initializer=seeded(2), name="refine"
    )(embedded)
    flat = keras.layers.Flatten()
    branch_a = dense(16, "branch_a", "tanh", 3)(
        keras.layers.Concatenate()([film_a, flat(refined_a)]))
    branch_b = dense(16, "branch_b", "tanh", 4)(
        keras.layers.Concatenate()([film_b, flat(refined_b)]))
    stitched_a, stitched_b = keras_mtl.layers.CrossStitch(
        2, per_channel=True, name="stitch")([branch_a, branch_b])
    reversed_h = keras_mtl.layers.GradientReversal(0.1, name="reversal")(h)
    outputs = {
        "a": dense(1, "head_a", seed=5)(stitched_a),
        "b": dense(1, "head_b", seed=6)(stitched_b),
        "domain": dense(1, "domain", seed=7)(reversed_h),
    }
    return keras_mtl.MultiTaskModel(x, outputs)


def test_every_layer_trains_with_pcgrad_and_round_trips(tmp_path):
    model = all_layers_model()
    shared = {v.path for v in model.shared_variables}
    for path in ("trunk/kernel", "film/gamma", "stitch/alpha"):
        assert path in shared, shared
    y = {
        "a": np.tanh(X @ W[:, :1]),
        "b": np.tanh(X @ W[:, 1:]),
        "domain": (X[:, 2:3] > 0).astype("float32"),
    }
    model.compile(
        keras.optimizers.Adam(2e-2),
        loss={"a": "mse", "b": "mse",
              "domain": keras.losses.BinaryCrossentropy(from_logits=True)},
        aggregator="pcgrad",
        # One batched backward pass per step: exercises the custom gradient
        # of GradientReversal under vmap / jacobian / batched autograd.
        vectorize=True,
    )
    history = model.fit(X, y, batch_size=32, epochs=10, verbose=0).history
    for task in ("a", "b"):
        first, last = history[f"{task}_loss"][0], history[f"{task}_loss"][-1]
        assert last < 0.5 * first, (task, history[f"{task}_loss"])
    assert np.isfinite(history["domain_loss"][-1])
    assert_keras_file_round_trip(model, X[:8], tmp_path)


def test_esmm_head_trains_with_pcgrad():
    rng = np.random.default_rng(1)
    x_np = rng.normal(size=(256, 6)).astype("float32")
    p_click = 1 / (1 + np.exp(-2 * x_np[:, :1]))
    click = rng.uniform(size=(256, 1)) < p_click
    buy = click & (rng.uniform(size=(256, 1)) < 0.5 + 0.4 * np.tanh(
        x_np[:, 1:2]))
    y = {"ctr": click.astype("float32"), "ctcvr": buy.astype("float32")}
    x = keras.Input((6,))
    shared = dense(16, "embedding", "tanh")(x)
    ctr = dense(1, "ctr_logit", seed=1)(dense(8, "ctr_tower", "relu", 2)(
        shared))
    cvr = dense(1, "cvr_logit", seed=3)(dense(8, "cvr_tower", "relu", 4)(
        shared))
    out = keras_mtl.layers.ESMMHead(output_mode="logits")([ctr, cvr])
    model = keras_mtl.MultiTaskModel(x, {"ctr": ctr, "ctcvr": out["ctcvr"]})
    shared_paths = {v.path for v in model.shared_variables}
    assert "ctr_tower/kernel" in shared_paths  # feeds both tasks
    assert not any("cvr" in p for p in shared_paths), shared_paths
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(2e-2), loss={"ctr": bce,
                                                     "ctcvr": bce},
                  aggregator="pcgrad")
    history = model.fit(x_np, y, batch_size=64, epochs=10, verbose=0).history
    for task in ("ctr", "ctcvr"):
        losses = history[f"{task}_loss"]
        assert losses[-1] < 0.85 * losses[0], (task, losses)
    pcvr = ops.sigmoid(keras.Model(x, out["cvr"])(x_np))
    pctcvr = ops.sigmoid(model(x_np)["ctcvr"])
    pctr = ops.sigmoid(model(x_np)["ctr"])
    np.testing.assert_allclose(ops.convert_to_numpy(pctr * pcvr),
                               ops.convert_to_numpy(pctcvr), rtol=1e-4)
