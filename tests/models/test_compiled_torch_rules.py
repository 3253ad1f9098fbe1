"""`jit_compile=True` on PyTorch: the rule runs as one `torch.compile` graph
inside the eager step, with the eager step's results, and is not
recompiled from step to step."""

import keras
import numpy as np
import pytest

from tests.helpers import BACKEND
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import to_numpy

pytestmark = pytest.mark.skipif(BACKEND != "torch",
                                reason="torch.compile of the rule")

# A solver loop (UPGrad), a conditional and a solve in a loop (CAGrad),
# random draws (PCGrad), a loss-only rule with state (FAMO).
CASES = [("parameters", "upgrad"), ("parameters", "cagrad"),
         ("parameters", "pcgrad"), ("gramian", "upgrad"),
         ("gramian", "mgda"), ("parameters", "famo")]


def _train(mode, aggregator, x, y, epochs, jit_compile):
    model = mtl_model()
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                  aggregator=aggregator, gradient_mode=mode,
                  jit_compile=jit_compile)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


def _reset():
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def _compiled_graphs():
    """(graphs compiled, graph breaks) since the last `_reset()`."""
    from torch._dynamo.utils import counters

    return (counters["stats"].get("unique_graphs", 0),
            sum(counters["graph_break"].values()))


@pytest.mark.parametrize("mode, aggregator", CASES)
def test_compiled_rule_equals_eager_without_recompiles(mode, aggregator,
                                                       tmp_path):
    _reset()
    x, y = make_data(48)
    eager = _train(mode, aggregator, x, y, 2, jit_compile=False)
    assert _compiled_graphs() == (0, 0)
    compiled = _train(mode, aggregator, x, y, 1, jit_compile=True)
    graphs, breaks = _compiled_graphs()
    # One graph per rule function the step called, and nothing else.
    assert graphs == 1 and breaks == 0, (graphs, breaks)
    compiled.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert _compiled_graphs() == (1, 0), "recompiled at a later step"
    assert compiled.jit_compile is False  # Keras' own step stays eager.
    for a, b in zip(eager.trainable_variables,
                    compiled.trainable_variables):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-5,
                                   atol=1e-6, err_msg=a.path)
    for key, value in eager.balancer.state.items():
        np.testing.assert_allclose(
            to_numpy(compiled.balancer.state[key]), to_numpy(value),
            rtol=1e-5, atol=1e-6, err_msg=key)

    path = str(tmp_path / "model.keras")
    compiled.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_compile_config()["jit_compile"] is True
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert _compiled_graphs()[0] == 2  # The loaded model's rule compiled.


def test_eager_and_auto_leave_the_rule_uncompiled():
    _reset()
    x, y = make_data(32)
    for jit_compile in (False, "auto"):
        _train("parameters", "upgrad", x, y, 1, jit_compile=jit_compile)
    assert _compiled_graphs() == (0, 0)
