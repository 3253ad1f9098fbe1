"""`keras_mtl.losses.RepMTL`: the terms against NumPy, one training step
against a float64 reference (closed-form saliencies, finite differences
for the double backpropagation)."""

import json

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import to_numpy

TASKS = ("a", "b", "c")


def numpy_terms(saliency, temperature):
    """TSR and CSA of a `(T, B, ..., C)` saliency, in float64, written
    from the formulas (loops over samples and tasks)."""
    s = np.asarray(saliency, np.float64)
    t, b, c = s.shape[0], s.shape[1], s.shape[-1]
    s = s.reshape(t, b, -1, c)
    magnitude = np.abs(s.mean(axis=-1))
    p = magnitude / (magnitude.sum(axis=0) + 1e-12)
    tsr = np.mean(-(p * np.log(p + 1e-12)).sum(axis=0))

    def unit(m):
        return m.ravel() / (np.linalg.norm(m) + 1e-12)

    anchors = [unit(s[:, i].mean(axis=1).T @ s[:, i].mean(axis=1))
               for i in range(b)]
    terms = []
    for i in range(b):
        negatives = [np.exp(anchors[i] @ anchors[k] / temperature)
                     for k in range(b) if k != i]
        for task in range(t):
            view = unit(s[task, i].T @ s[task, i])
            positive = np.exp(anchors[i] @ view / temperature)
            terms.append(-np.log(positive / (positive + sum(negatives))))
    return tsr, np.mean(terms)


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 4, 3, 2, 5)])
def test_terms_match_numpy(shape):
    rng = np.random.default_rng(0)
    saliency = rng.normal(size=shape).astype("float32")
    saliency[0] *= 1e-3  # a task with a tiny saliency
    regularizer = keras_mtl.losses.RepMTL(tsr_weight=0.7, csa_weight=1.3,
                                          temperature=0.2)
    total, tsr, csa = (float(to_numpy(v)) for v in regularizer(saliency))
    want_tsr, want_csa = numpy_terms(saliency, 0.2)
    np.testing.assert_allclose([tsr, csa], [want_tsr, want_csa], rtol=1e-4)
    np.testing.assert_allclose(total, 0.7 * want_tsr + 1.3 * want_csa,
                               rtol=1e-4)


def test_degenerate_saliency_stays_finite():
    regularizer = keras_mtl.losses.RepMTL()
    for saliency in (np.zeros((2, 4, 3)), np.ones((2, 1, 3))):
        values = [float(to_numpy(v)) for v in regularizer(
            saliency.astype("float32"))]
        assert np.all(np.isfinite(values)), saliency.shape
    # One sample: no other sample to contrast with, CSA is 0.
    assert float(to_numpy(regularizer(np.ones((2, 1, 3), "float32"))[2])) \
        == 0.0


def test_arguments_and_config():
    for kwargs, match in (({"tsr_weight": -1.0}, "tsr_weight"),
                          ({"csa_weight": float("inf")}, "csa_weight"),
                          ({"temperature": 0.0}, "temperature")):
        with pytest.raises(ValueError, match=match):
            keras_mtl.losses.RepMTL(**kwargs)
    with pytest.raises(ValueError, match="saliency"):
        keras_mtl.losses.RepMTL()(np.ones((2, 3), "float32"))
    regularizer = keras_mtl.losses.RepMTL(0.7, 1.1, 0.3)
    clone = keras_mtl.losses.RepMTL.from_config(
        json.loads(json.dumps(regularizer.get_config())))
    assert clone.get_config() == regularizer.get_config()


def linear_model(seed=0):
    """`z = x W + c` (the shared features), one linear head per task."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((3,))
    z = keras.layers.Dense(4, name="features")(x)
    return keras_mtl.MultiTaskModel(
        x, {t: keras.layers.Dense(1, name=t)(z) for t in TASKS})


def unpack(theta, shapes):
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(theta[start: start + size].reshape(shape))
        start += size
    return out


def regularizer_of(theta, shapes, x, y, regularizer):
    """Rep-MTL's value at flat parameters `theta` = (W, c, w_a, b_a, ...):
    the saliency `dL_t/dz = 2 r_t w_t^T / B` in closed form."""
    kernel, bias, *heads = unpack(theta, shapes)
    z = x @ kernel + bias
    saliency = []
    for i, task in enumerate(TASKS):
        w, b = heads[2 * i], heads[2 * i + 1]
        residual = z @ w + b - y[task]
        saliency.append(2.0 * residual @ w.T / len(x))
    tsr, csa = numpy_terms(np.stack(saliency), regularizer.temperature)
    return regularizer.tsr_weight * tsr + regularizer.csa_weight * csa


def test_one_step_matches_a_float64_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype("float32")
    # Residuals far from 0: a sample's normalised CSA view `w w^T r^2 /
    # |r|^2` jumps where a residual `r` crosses 0, where no finite
    # difference (nor float32) is accurate.
    y = {t: rng.normal(3.0, 1.0, size=(8, 1)).astype("float32")
         for t in TASKS}
    model = linear_model()
    regularizer = keras_mtl.losses.RepMTL(temperature=0.5)
    layers = ["features"] + list(TASKS)
    params = [np.asarray(to_numpy(v), np.float64)
              for name in layers for v in model.get_layer(name).weights]
    shapes = [p.shape for p in params]
    theta = np.concatenate([p.ravel() for p in params])
    x64 = x.astype(np.float64)
    y64 = {t: v.astype(np.float64) for t, v in y.items()}

    # The equal-weight ("sum") features step: each head's own gradient,
    # the trunk through dz = sum_t dL_t/dz.
    kernel, bias, *heads = unpack(theta, shapes)
    z = x64 @ kernel + bias
    grads = [np.zeros_like(kernel), np.zeros_like(bias)]
    dz = np.zeros_like(z)
    for i, task in enumerate(TASKS):
        w, b = heads[2 * i], heads[2 * i + 1]
        d_out = 2.0 * (z @ w + b - y64[task]) / len(x)
        grads += [z.T @ d_out, d_out.sum(axis=0)]
        dz += d_out @ w.T
    grads[0], grads[1] = x64.T @ dz, dz.sum(axis=0)
    task_gradient = np.concatenate([g.ravel() for g in grads])
    # The regulariser's gradient by central differences.
    step = 1e-6
    reg_gradient = np.array([
        (regularizer_of(theta + step * e, shapes, x64, y64, regularizer)
         - regularizer_of(theta - step * e, shapes, x64, y64, regularizer))
        / (2 * step) for e in np.eye(theta.size)])
    lr = 0.1
    expected = theta - lr * (task_gradient + reg_gradient)

    model.compile(keras.optimizers.SGD(lr), loss="mse", aggregator="sum",
                  gradient_mode="features", features="features",
                  saliency_regularizer=regularizer)
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False,
                        verbose=0)
    got = np.concatenate([np.asarray(to_numpy(v), np.float64).ravel()
                          for name in layers
                          for v in model.get_layer(name).weights])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(reg_gradient).max() > 1e-3  # the regulariser mattered
    assert history.history["rep_mtl_csa"][0] > 0.0
    config = model.get_compile_config()
    clone = linear_model()
    clone.compile_from_config(json.loads(json.dumps(config)))
    assert clone.balancer.saliency_regularizer.get_config() == \
        regularizer.get_config()


def test_with_another_rule_and_refused_in_parameter_mode():
    model = linear_model()
    with pytest.raises(ValueError, match="gradient_mode='features'"):
        model.compile("sgd", loss="mse", saliency_regularizer="rep_mtl")
    assert model.balancer is None
    with pytest.raises(ValueError, match="saliency_regularizer"):
        model.compile("sgd", loss="mse", gradient_mode="features",
                      features="features", saliency_regularizer="rep")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = {t: rng.normal(size=(16, 1)).astype("float32") for t in TASKS}
    model.compile(keras.optimizers.SGD(0.05), loss="mse", aggregator="upgrad",
                  gradient_mode="features", features="features",
                  saliency_regularizer="rep_mtl")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(history.history["rep_mtl_tsr"]).all()
