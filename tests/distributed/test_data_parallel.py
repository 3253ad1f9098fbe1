"""N replicas train the same model as one device on the global batch.

Each backend's check runs in fresh processes (devices and process groups are
fixed when a backend starts): two logical CPU devices under TensorFlow's
`MirroredStrategy`, two `torchrun` processes with gloo, and two JAX
processes under `keras.distribution.DataParallel`. Every case of
`runs.CASES` (aggregators in both gradient modes, with unevenly masked
labels and regularisation) must end with the same weights, aggregator state
and logs as one device (rtol 1e-5), and a `.keras` file saved on one side
must resume on the other as one uninterrupted run.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
HERE = os.path.join("tests", "distributed")
SCRIPT = os.path.join(HERE, "process_script.py")


def run(command, env=None, timeout=900):
    full_env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=BACKEND,
                    **(env or {}))
    result = subprocess.run(command, cwd=ROOT, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    return result.stdout + result.stderr[-6000:]


@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="tf.distribute runs on TensorFlow.")
def test_mirrored_strategy_matches_one_device():
    output = run([sys.executable, os.path.join(HERE,
                                               "tf_mirrored_script.py")])
    assert "MIRRORED_OK" in output, output


MWMS_SCRIPT = """
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
from tests.distributed import runs
data = runs.problem()
with strategy.scope():
    model = runs.build()
    runs.compile_case(model, ("mgda", "parameters"))
before = [v.numpy() for v in model.trainable_variables]
try:
    runs.train(None, data, model=model)
except ValueError as error:
    assert "20585" in str(error) and "MirroredStrategy" in str(error), error
    assert all((a == v.numpy()).all()
               for a, v in zip(before, model.trainable_variables))
    print("REFUSED_OK")
"""


@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="tf.distribute runs on TensorFlow.")
def test_multi_worker_mirrored_strategy_is_refused_clearly():
    output = run([sys.executable, "-c", MWMS_SCRIPT])
    assert "REFUSED_OK" in output, output


def compare_folders(single, multi, names):
    from tests.distributed import runs

    failures = []
    for name in names:
        a = dict(np.load(os.path.join(single, name)))
        b = dict(np.load(os.path.join(multi, name)))
        failures += [f"{name}: {d}" for d in runs.differences(a, b)]
    return failures


def launchers():
    """Commands that start two processes of the script (a list per
    process: JAX starts each itself)."""
    if BACKEND == "torch":
        return [[sys.executable, "-m", "torch.distributed.run",
                 "--standalone", "--nproc_per_node=2", SCRIPT]]
    return [[sys.executable, SCRIPT]] * 2


def run_processes(args):
    """Runs the script in two processes; returns their output."""
    if BACKEND == "torch":
        return run(launchers()[0] + args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=BACKEND,
                   JAX_PLATFORMS="cpu",
                   KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                   KERAS_DISTRIBUTION_PROCESS_ID=str(index))
        procs.append(subprocess.Popen(
            [sys.executable, SCRIPT] + args, cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return "".join(p.communicate(timeout=900)[0][-6000:] for p in procs)


@pytest.mark.skipif(BACKEND == "tensorflow",
                    reason="MirroredStrategy runs in one process.")
def test_processes_match_one_process(tmp_path):
    from tests.distributed import runs

    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    logs = run([sys.executable, SCRIPT, str(single), "train"],
               {"JAX_PLATFORMS": "cpu"})
    logs += run_processes([str(multi), "train"])
    # Resume each side's one-epoch file on the other side.
    logs += run_processes([str(multi), "resume", str(single / "first.keras")])
    logs += run([sys.executable, SCRIPT, str(single), "resume",
                 str(multi / "first.keras")], {"JAX_PLATFORMS": "cpu"})
    names = ["_".join(case) + ".npz" for case in runs.backend_cases(BACKEND)]
    missing = [n for n in names + ["resumed.npz"]
               if not (single / n).exists() or not (multi / n).exists()]
    assert not missing, logs
    failures = compare_folders(single, multi, names)
    reference = dict(np.load(single / "pcgrad_parameters.npz"))
    for folder in (single, multi):
        resumed = dict(np.load(folder / "resumed.npz"))
        failures += [f"resumed in {folder.name}: {d}"
                     for d in runs.differences(reference, resumed)
                     if not d.startswith("log/")]
    assert not failures, failures


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX.")
def test_model_parallel_adapted_backbone_matches_one_device():
    pytest.importorskip("keras_hub")
    output = run([sys.executable,
                  os.path.join(HERE, "jax_model_parallel_script.py")],
                 {"XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                  "JAX_PLATFORMS": "cpu"})
    assert "MODEL_PARALLEL_OK" in output, output


@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="tf.distribute runs on TensorFlow.")
@pytest.mark.parametrize("kind", ["mirrored", "one_device"])
def test_one_replica_strategies_train_and_skip_like_no_strategy(kind):
    import tensorflow as tf

    from tests.distributed import runs

    strategy = (tf.distribute.MirroredStrategy(["/cpu:0"]) if kind ==
                "mirrored" else tf.distribute.OneDeviceStrategy("/cpu:0"))
    x, y, sw = runs.problem()
    x = x.copy()
    x[20] = np.nan
    case = ("mgda", "features")
    plain = runs.snapshot(*runs.train(case, (x, y, sw)))
    scoped = runs.snapshot(*runs.train(case, (x, y, sw), strategy.scope()))
    assert plain["log/skipped_steps"] == 1.0
    assert not runs.differences(plain, scoped)
