"""`keras.callbacks.BackupAndRestore`: a training process killed with
SIGKILL in the middle of an epoch, then restarted, ends with the same
weights as an uninterrupted run (aggregator state, seed and epoch count
included: PCGrad draws its task order from the seed, DWA weights the tasks
by their losses of the last two epochs)."""

import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import keras, numpy as np
    sys.path.insert(0, {root!r})
    from tests.helpers import LOSSES, make_data, mtl_model

    backup, out, kill = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    x, y = make_data(64)
    model = mtl_model(seed=5)
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES,
                  aggregator="{aggregator}")

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if kill and self.epoch == 1 and batch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    callbacks = [keras.callbacks.BackupAndRestore(backup), Kill()]
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
              callbacks=callbacks)
    np.savez(out, *[keras.ops.convert_to_numpy(v) for v in model.weights])
    """
)


def run(tmp_path, script, name, kill):
    backup = os.path.join(tmp_path, f"backup_{name}")
    out = os.path.join(tmp_path, f"{name}.npz")
    process = subprocess.run(
        [sys.executable, script, backup, out, "1" if kill else "0"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ},
    )
    return process, backup, out


# PCGrad (random draws) and DWA (epoch state); on JAX, where each process
# compiles its steps, DWA only (CI time).
KILLED = ["dwa"] if keras.config.backend() == "jax" else ["pcgrad", "dwa"]


@pytest.mark.parametrize("aggregator", KILLED)
def test_killed_training_resumes_to_the_same_weights(tmp_path, aggregator):
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    script = os.path.join(tmp_path, "train.py")
    with open(script, "w") as handle:
        handle.write(SCRIPT.format(root=root, aggregator=aggregator))
    straight, _, straight_out = run(tmp_path, script, "straight", False)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed, backup, _ = run(tmp_path, script, "resumed", True)
    assert killed.returncode == -signal.SIGKILL
    assert os.path.isdir(backup)
    resumed, _, resumed_out = run(tmp_path, script, "resumed", False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with np.load(straight_out) as a, np.load(resumed_out) as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6)
