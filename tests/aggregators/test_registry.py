import json

import numpy as np
import pytest

import keras_mtl
from keras_mtl import aggregators
from tests.helpers import to_numpy

ALL = [
    aggregators.Sum(),
    aggregators.Mean(),
    aggregators.Constant([0.3, 0.7]),
    aggregators.MGDA(normalization="l2", max_iters=50),
    aggregators.PCGrad(shuffle=False),
]


@pytest.mark.parametrize("name", ["sum", "mean", "mgda", "pcgrad"])
def test_get_by_name(name):
    agg = aggregators.get(name)
    assert agg.name == name
    assert aggregators.get(agg) is agg


@pytest.mark.parametrize("agg", ALL, ids=lambda a: type(a).__name__)
def test_config_round_trip(agg):
    config = aggregators.serialize(agg)
    json.dumps(config)
    clone = aggregators.deserialize(config)
    assert type(clone) is type(agg)
    assert clone.get_config() == agg.get_config()
    assert aggregators.get(config).get_config() == agg.get_config()
    jacobian = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(clone(jacobian)), to_numpy(agg(jacobian))
    )


def test_clear_errors():
    with pytest.raises(ValueError, match="Unknown aggregator name.*nope"):
        aggregators.get("nope")
    with pytest.raises(ValueError, match="Received: aggregator=3"):
        aggregators.get(3)
    with pytest.raises(ValueError, match="normalization='l3'"):
        aggregators.MGDA(normalization="l3")
    with pytest.raises(ValueError, match="max_iters=0"):
        aggregators.MGDA(max_iters=0)
    with pytest.raises(ValueError, match="weights=\\[nan\\]"):
        aggregators.Constant([float("nan")])
    with pytest.raises(ValueError, match="shuffle='yes'"):
        aggregators.PCGrad(shuffle="yes")
    with pytest.raises(ValueError, match="jacobian.shape=\\(3,\\)"):
        aggregators.Sum()(np.ones(3, "float32"))
    with pytest.raises(ValueError, match="losses.shape=\\(3,\\)"):
        aggregators.Sum().aggregate(np.ones((2, 3), "float32"), np.ones(3))
    with pytest.raises(ValueError, match="2 weights but there are 3 tasks"):
        aggregators.Constant([1.0, 2.0])(np.ones((3, 2), "float32"))
    with pytest.raises(ValueError, match="needs the task losses"):
        aggregators.MGDA(normalization="loss")(np.ones((2, 2), "float32"))


def test_mgda_normalizations_follow_the_reference_code():
    jacobian = np.array([[1.0, 0.0], [0.0, 10.0]], "float32")
    losses = np.array([1.0, 4.0], "float32")
    # Unnormalised: weights proportional to 1 / ||g_i||^2.
    _, w, _ = aggregators.MGDA().aggregate(jacobian, losses)
    np.testing.assert_allclose(to_numpy(w), [100 / 101, 1 / 101], rtol=1e-4)
    # l2: unit gradients, so equal weights.
    _, w, _ = aggregators.MGDA("l2").aggregate(jacobian, losses)
    np.testing.assert_allclose(to_numpy(w), [0.5, 0.5], rtol=1e-4)
    # loss: g_i / L_i = [1, 0], [0, 2.5] -> weights ~ 1/1 and 1/6.25.
    _, w, _ = aggregators.MGDA("loss").aggregate(jacobian, losses)
    np.testing.assert_allclose(to_numpy(w), [6.25 / 7.25, 1 / 7.25], rtol=1e-4)
    # loss+: g_i / (L_i ||g_i||) = [1, 0], [0, 0.25] -> weights ~ 1 and 16.
    _, w, _ = aggregators.MGDA("loss+").aggregate(jacobian, losses)
    np.testing.assert_allclose(to_numpy(w), [1 / 17, 16 / 17], rtol=1e-4)


def test_public_names_resolve():
    from keras_mtl.src.api_export import PUBLIC_SYMBOLS

    for path, symbol in PUBLIC_SYMBOLS.items():
        module, _, name = path.rpartition(".")
        obj = keras_mtl
        for part in module.split(".")[1:]:
            obj = getattr(obj, part)
        assert getattr(obj, name) is symbol, path
