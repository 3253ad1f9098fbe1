"""`compile(aggregation_groups=...)`: one aggregation per group of shared
variables, each group with its own aggregator state."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import per_task_gradients
from tests.helpers import to_numpy

TASKS = ("reg", "cls", "bin")
TRUNK = ["trunk_1/kernel", "trunk_1/bias", "features/kernel",
         "features/bias"]


def _one_step(groups, aggregator="mgda", jit_compile=False):
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.SGD(1.0), loss=LOSSES,
                  aggregator=aggregator, aggregation_groups=groups,
                  jit_compile=jit_compile)
    grads = per_task_gradients(model, x, y, TASKS)
    start = {v.path: to_numpy(v) for v in model.trainable_variables}
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    moved = {v.path: start[v.path] - to_numpy(v)
             for v in model.trainable_variables}
    return model, grads, moved


def _expected(grads, group, aggregator):
    jacobian = np.stack([np.concatenate([grads[t][p].ravel() for p in group])
                         for t in TASKS])
    direction = to_numpy(aggregator(jacobian))
    pieces = np.split(direction, np.cumsum(
        [grads[TASKS[0]][p].size for p in group])[:-1])
    return {p: piece.reshape(grads[TASKS[0]][p].shape)
            for p, piece in zip(group, pieces)}


@pytest.mark.parametrize("groups, expected_groups", [
    ("variable", [[p] for p in TRUNK]),
    ("layer", [TRUNK[:2], TRUNK[2:]]),
    ([["features"]], [TRUNK[2:], TRUNK[:2]]),
    ([["trunk_1/kernel", "features/bias"]],
     [["trunk_1/kernel", "features/bias"], ["trunk_1/bias",
                                            "features/kernel"]]),
])
def test_each_group_is_aggregated_on_its_own(groups, expected_groups):
    model, grads, moved = _one_step(groups)
    for group in expected_groups:
        expected = _expected(grads, group, keras_mtl.aggregators.MGDA())
        for path in group:
            np.testing.assert_allclose(moved[path], expected[path],
                                       rtol=2e-3, atol=2e-5)
    assert model.balancer.num_groups == len(expected_groups)


def test_one_group_is_the_default_aggregation():
    _, grads, moved = _one_step(None)
    expected = _expected(grads, TRUNK, keras_mtl.aggregators.MGDA())
    for path in TRUNK:
        np.testing.assert_allclose(moved[path], expected[path], rtol=2e-3,
                                   atol=2e-5)


def test_stateful_rules_keep_one_state_per_group_and_save_it(tmp_path):
    model, _, _ = _one_step("layer", aggregator="nash_mtl")
    state = model.balancer.state
    assert "weights" in state and "group1_weights" in state
    first = to_numpy(state["weights"])
    second = to_numpy(state["group1_weights"])
    assert np.all(first > 0) and np.all(second > 0)
    assert not np.allclose(first, second)
    path = str(tmp_path / "grouped.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.balancer.aggregation_groups == "layer"
    np.testing.assert_allclose(
        to_numpy(loaded.balancer.state["group1_weights"]), second)


@pytest.mark.parametrize("kwargs", [
    {"aggregation_groups": "layers"},
    {"aggregation_groups": ["features"]},
    {"aggregation_groups": [[]]},
    {"aggregation_groups": "layer", "aggregator": "uncertainty_weighting"},
    {"aggregation_groups": "layer", "gradient_mode": "features",
     "features": "features"},
])
def test_bad_groups_are_refused_at_compile(kwargs):
    model = mtl_model()
    with pytest.raises(ValueError, match="aggregation_groups"):
        model.compile("sgd", loss=LOSSES, **{"aggregator": "mgda", **kwargs})
    assert model.balancer is None


def test_unknown_and_overlapping_paths_are_refused():
    for groups in ([["nope"]], [["features"], ["features/kernel"]]):
        model = mtl_model()
        with pytest.raises(ValueError, match="aggregation_groups"):
            model.compile("sgd", loss=LOSSES, aggregator="mgda",
                          aggregation_groups=groups)
