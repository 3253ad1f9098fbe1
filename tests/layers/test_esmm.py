"""ESMMHead and ESMMLoss: NumPy references, log-space stability, round
trips, errors."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mtl
from tests.helpers import to_numpy
from tests.layers.gate_checks import assert_config_round_trip
from tests.layers.gate_checks import backend_gradient

RNG = np.random.default_rng(0)
A = RNG.normal(scale=2.0, size=(6, 1)).astype("float32")
B = RNG.normal(scale=2.0, size=(6, 1)).astype("float32")
EXTREME = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4], "float32")
BCE = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, "float64")))


def log_sigmoid64(v):
    return -np.logaddexp(0.0, -np.asarray(v, "float64"))


def exact_ctcvr_bce(y, a, b):
    """Float64 log-space reference of BCE(y, s(a) s(b))."""
    log_p = log_sigmoid64(a) + log_sigmoid64(b)
    log_not_p = np.logaddexp(log_sigmoid64(-a), log_sigmoid64(a)
                             + log_sigmoid64(-b))
    return -(y * log_p + (1 - y) * log_not_p)


def test_probabilities_match_numpy():
    out = keras_mtl.layers.ESMMHead()([A, B])
    assert set(out) == {"ctr", "cvr", "ctcvr"}
    np.testing.assert_allclose(to_numpy(out["ctr"]), sigmoid(A), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(out["cvr"]), sigmoid(B), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(out["ctcvr"]), sigmoid(A) * sigmoid(B),
                               rtol=1e-5)


def test_probability_inputs():
    pa, pb = sigmoid(A).astype("float32"), sigmoid(B).astype("float32")
    out = keras_mtl.layers.ESMMHead(from_logits=False)([pa, pb])
    np.testing.assert_allclose(to_numpy(out["ctcvr"]), pa * pb, rtol=1e-6)
    logits = keras_mtl.layers.ESMMHead(
        from_logits=False, output_mode="logits"
    )([pa, pb])
    np.testing.assert_allclose(to_numpy(logits["ctr"]), A, atol=1e-4)
    np.testing.assert_allclose(sigmoid(to_numpy(logits["ctcvr"])), pa * pb,
                               rtol=1e-4)


def test_ctcvr_logit_gives_the_naive_loss_for_moderate_logits():
    out = keras_mtl.layers.ESMMHead(output_mode="logits")([A, B])
    np.testing.assert_array_equal(to_numpy(out["ctr"]), A)
    np.testing.assert_array_equal(to_numpy(out["cvr"]), B)
    p = sigmoid(A) * sigmoid(B)
    np.testing.assert_allclose(sigmoid(to_numpy(out["ctcvr"])), p, rtol=1e-5)
    y = RNG.integers(0, 2, size=A.shape).astype("float32")
    naive = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    stable = to_numpy(BCE(y, out["ctcvr"]))
    np.testing.assert_allclose(stable, naive[:, 0], rtol=1e-5)


def grid():
    a, b = np.meshgrid(EXTREME, EXTREME)
    return a.reshape(-1, 1), b.reshape(-1, 1)


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_ctcvr_logit_loss_is_finite_and_accurate_for_extreme_logits(label):
    a, b = grid()
    head = keras_mtl.layers.ESMMHead(output_mode="logits")
    y = np.full_like(a, label)
    loss = to_numpy(BCE(y, head([a, b])["ctcvr"]))
    want = exact_ctcvr_bce(label, a, b)[:, 0]
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    # The naive product underflows or rounds: BCE(p) is inf or wrong.
    with np.errstate(all="ignore"):
        p = (sigmoid(a) * sigmoid(b)).astype("float32")
        naive = -(label * np.log(p) + (1 - label) * np.log1p(-p))
    assert not np.allclose(naive[:, 0], want, rtol=1e-3)

    def total(v):
        return BCE(y, head([v, ops.convert_to_tensor(b)])["ctcvr"])

    grad = backend_gradient(total, a)
    assert np.all(np.isfinite(grad))


def naive_esmm_loss(y, logits, ctr_weight=1.0):
    pa, pb = sigmoid(logits[:, 0]), sigmoid(logits[:, 1])
    click, conv = y[:, 0], np.nan_to_num(y[:, 1]) * y[:, 0]
    ctr = -(click * np.log(pa) + (1 - click) * np.log(1 - pa))
    p = pa * pb
    ctcvr = -(conv * np.log(p) + (1 - conv) * np.log(1 - p))
    return ctr_weight * ctr + ctcvr


def test_esmm_loss_equals_the_naive_loss_for_moderate_logits():
    logits = np.concatenate([A, B], axis=1)
    click = RNG.integers(0, 2, size=6).astype("float32")
    conv = RNG.integers(0, 2, size=6).astype("float32")
    conv[click == 0] = np.nan  # unobserved conversions are ignored
    y = np.stack([click, conv], axis=1)
    for weight in (1.0, 0.5):
        loss = keras_mtl.losses.ESMMLoss(ctr_weight=weight, reduction=None)
        np.testing.assert_allclose(
            to_numpy(loss(y, logits)), naive_esmm_loss(y, logits, weight),
            rtol=1e-5,
        )
    mean = keras_mtl.losses.ESMMLoss()(y, logits)
    np.testing.assert_allclose(float(mean),
                               naive_esmm_loss(y, logits).mean(), rtol=1e-5)


def test_esmm_loss_is_finite_for_extreme_logits():
    a, b = grid()
    logits = np.concatenate([a, b], axis=1)
    loss_fn = keras_mtl.losses.ESMMLoss(reduction=None)
    for click, conv in ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)):
        y = np.tile([[click, conv]], (len(a), 1)).astype("float32")
        loss = to_numpy(loss_fn(y, logits))
        ctr = -(click * log_sigmoid64(a) + (1 - click) * log_sigmoid64(-a))
        want = ctr[:, 0] + exact_ctcvr_bce(click * conv, a, b)[:, 0]
        assert np.all(np.isfinite(loss))
        np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
        grad = backend_gradient(lambda v: loss_fn(y, v), logits)
        assert np.all(np.isfinite(grad))


def test_esmm_loss_serialisation():
    loss = keras_mtl.losses.ESMMLoss(ctr_weight=0.3, name="esmm")
    config = keras.losses.serialize(loss)
    clone = keras.losses.deserialize(config)
    assert isinstance(clone, keras_mtl.losses.ESMMLoss)
    assert clone.get_config() == loss.get_config()
    assert clone.ctr_weight == 0.3


def test_esmm_loss_errors():
    with pytest.raises(ValueError, match="ctr_weight=-1"):
        keras_mtl.losses.ESMMLoss(ctr_weight=-1)
    loss = keras_mtl.losses.ESMMLoss()
    with pytest.raises(ValueError, match="y_pred.shape=\\(6, 1\\)"):
        loss(np.zeros((6, 2)), A)
    with pytest.raises(ValueError, match="y_true.shape=\\(6, 1\\)"):
        loss(np.zeros((6, 1)), np.concatenate([A, B], axis=1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"from_logits": "yes"}, "from_logits='yes'"),
        ({"output_mode": "log"}, "output_mode='log'"),
        ({"epsilon": 0.0}, "epsilon=0.0"),
    ],
)
def test_head_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_mtl.layers.ESMMHead(**kwargs)


def test_head_invalid_inputs_and_shapes():
    head = keras_mtl.layers.ESMMHead()
    with pytest.raises(ValueError, match="list of two tensors"):
        head(keras.Input((1,)))
    with pytest.raises(ValueError, match="same shape"):
        head([keras.Input((1,)), keras.Input((2,))])
    out = head([keras.Input((1,)), keras.Input((1,))])
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "ctr": (None, 1), "cvr": (None, 1), "ctcvr": (None, 1)}


def test_head_config_round_trip():
    for kwargs in ({}, {"from_logits": False, "output_mode": "logits",
                        "epsilon": 1e-4}):
        head = keras_mtl.layers.ESMMHead(**kwargs)
        inputs = [A, B] if not kwargs else [sigmoid(A).astype("float32"),
                                            sigmoid(B).astype("float32")]
        assert_config_round_trip(head, inputs)
