"""Training state survives saving: 2 epochs straight equal 1 epoch, save,
load and 1 more epoch, for every registered aggregator that keeps state."""

import os

import keras
import numpy as np
import pytest

from keras_mtl.aggregators import Constant
from keras_mtl.src.aggregators.registry import ALL_AGGREGATORS
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import to_numpy


def build(aggregator):
    if aggregator == "constant":
        aggregator = Constant([1.0, 0.5, 2.0])
    model = mtl_model(seed=3)
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES,
                  aggregator=aggregator)
    return model


def _keeps_state(name):
    """Whether the rule carries anything from step to step besides its
    logged diagnostics: state, parameters, the epoch or random draws."""
    aggregator = (Constant([1.0, 0.5, 2.0]) if name == "constant"
                  else ALL_AGGREGATORS[name]())
    kept = set(aggregator.initial_state(3, 10)) - set(aggregator.diagnostics)
    return bool(kept or aggregator.initial_parameters(3)
                or aggregator.uses_epoch or name in RANDOMISED)


RANDOMISED = ("pcgrad", "gradvac", "graddrop", "rlw", "cosmos")
# Rules that keep nothing resume like "sum" (the optimizer's state only).
# On JAX and TensorFlow, where each case compiles three steps, a subset
# covers every kind of state the engines carry (optimizer only, random
# draws, solver warm starts, loss histories, learned parameters, EMAs, the
# epoch, bilevel logits); PyTorch runs every stateful rule (CI time).
COMPILED_SUBSET = ("sum", "pcgrad", "nash_mtl", "dwa", "famo", "gradnorm",
                   "uncertainty_weighting", "cr_mogm", "cosmos", "modo",
                   "auto_lambda")
STATEFUL = ["sum"] + [
    n for n in sorted(ALL_AGGREGATORS) if _keeps_state(n)
    and (keras.config.backend() == "torch" or n in COMPILED_SUBSET)]


@pytest.mark.parametrize("name", STATEFUL)
def test_two_epochs_equal_one_plus_save_load_plus_one(tmp_path, name):
    x, y = make_data(32)
    fit = dict(batch_size=32, verbose=0, shuffle=False)
    straight = build(name)
    straight.fit(x, y, epochs=2, **fit)

    resumed = build(name)
    resumed.fit(x, y, epochs=1, **fit)
    path = os.path.join(tmp_path, "model.keras")
    resumed.save(path)
    loaded = keras.saving.load_model(path)
    loaded.fit(x, y, epochs=1, **fit)

    for a, b in zip(straight.weights, loaded.weights):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=0,
                                   atol=1e-6, err_msg=f"{name}: {a.path}")
    for key, variable in straight.balancer.named_variables().items():
        if key == "seed":
            continue
        np.testing.assert_allclose(
            to_numpy(loaded.balancer.named_variables()[key]),
            to_numpy(variable), rtol=0, atol=1e-6, err_msg=f"{name}: {key}")


def test_epoch_driven_rules_keep_counting_across_fit_calls():
    x, y = make_data(32)
    model = build("dwa")
    for _ in range(3):
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert float(to_numpy(model.balancer.epoch)) == 2.0
    weights = [history.history[f"{t}_weight"][-1] for t in ("reg", "cls",
                                                             "bin")]
    assert not np.allclose(weights, 1.0)
