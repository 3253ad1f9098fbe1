import keras
import numpy as np
import pytest

import keras_mtl
from tests.transfer.builders import randomize

AdapterWrapper = keras_mtl.transfer.AdapterWrapper


def adapter():
    return keras_mtl.layers.BottleneckAdapter(
        reduction_factor=2, residual=False
    )


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_output_placement_and_inactive_wrapper():
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    inner = keras.layers.Dense(8)
    wrapper = AdapterWrapper(inner, placement="output",
                             adapters={"t": adapter()})
    np.testing.assert_allclose(to_numpy(wrapper(x)), to_numpy(inner(x)),
                               atol=1e-6)
    wrapper.set_active("t")
    randomize(wrapper.adapters["t"].weights)
    d = to_numpy(inner(x))
    expected = d + to_numpy(wrapper.adapters["t"](d))
    np.testing.assert_allclose(to_numpy(wrapper(x)), expected, atol=1e-5)


def test_config_round_trip():
    wrapper = AdapterWrapper(
        keras.layers.LayerNormalization(epsilon=1e-5),
        adapters={"a": adapter(), "b": adapter()},
        active="b",
    )
    wrapper.build((None, 3, 8))
    config = wrapper.get_config()
    clone = AdapterWrapper.from_config(config)
    assert clone.get_config() == config
    assert clone.names == ["a", "b"] and clone.active == "b"
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(wrapper)
    )
    assert type(restored) is AdapterWrapper
    assert restored.get_config() == config


def test_argument_errors():
    with pytest.raises(ValueError, match="placement='middle'"):
        AdapterWrapper(keras.layers.Dropout(0.1), placement="middle")
    with pytest.raises(ValueError, match="layer="):
        AdapterWrapper("dense")
    with pytest.raises(ValueError, match=r"name='c'"):
        AdapterWrapper(keras.layers.Dropout(0.1), adapters={"a": adapter()},
                       active="c")
    wrapper = AdapterWrapper(keras.layers.Dropout(0.1),
                             adapters={"a": adapter()})
    with pytest.raises(ValueError, match="already has"):
        wrapper.add_adapter("a", adapter())
    with pytest.raises(ValueError, match=r"sources=\['z'\]"):
        wrapper.add_combiner("mix", keras.layers.Identity(), ["z"])
