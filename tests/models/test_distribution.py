"""`fit` under `keras.distribution.DataParallel` on 4 virtual CPU devices.

JAX must see the devices before it starts, so the check runs in a fresh
interpreter with `XLA_FLAGS=--xla_force_host_platform_device_count=4`.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import BACKEND

SCRIPT = textwrap.dedent(
    """
    import keras
    import numpy as np
    import keras_mtl
    from tests.helpers import LOSSES, make_data, mtl_model

    assert len(keras.distribution.list_devices("cpu")) == 4
    x, y = make_data(64)

    def train(aggregator, mode, distributed):
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=keras.distribution.list_devices("cpu"))
            if distributed else None)
        model = mtl_model(seed=5)
        model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES,
                      aggregator=aggregator, gradient_mode=mode,
                      features="features")
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
        # The model's variables: solver diagnostics such as MGDA's iteration
        # count may differ by a few iterations with the rounding.
        return [np.asarray(v.value) for v in model.trainable_variables], model

    for aggregator in ("pcgrad_fixed", "mgda"):
        for mode in ("parameters", "features"):
            agg = (keras_mtl.aggregators.PCGrad(shuffle=False)
                   if aggregator == "pcgrad_fixed" else aggregator)
            single, _ = train(agg, mode, False)
            multi, model = train(agg, mode, True)
            kernel = model.get_layer("features").kernel.value
            assert len(kernel.sharding.device_set) == 4, kernel.sharding
            # MGDA's solver stops at a KKT tolerance of 1e-7, and the
            # reduction order of the sharded Gramian can change its path;
            # Adam then magnifies differences in tiny gradient entries.
            for a, b in zip(single, multi):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
            print(aggregator, mode, "max|dw| =",
                  max(float(np.abs(a - b).max())
                      for a, b in zip(single, multi)))
    print("DISTRIBUTED_OK")
    """
)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX.")
def test_data_parallel_matches_single_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    # The single-device reference runs on the CPU as well: on a GPU machine
    # it would otherwise use the GPU, whose float32 products differ (TF32).
    env["JAX_PLATFORMS"] = "cpu"
    env["KERAS_BACKEND"] = "jax"
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "DISTRIBUTED_OK" in result.stdout, (
        result.stdout + result.stderr[-4000:]
    )
