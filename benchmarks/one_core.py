"""One CPU thread per benchmark process, the same for every backend.

`ONE_THREAD_ENV` holds the thread settings of the three backends, for a
worker's environment. They do not stop XLA's CPU client in JAX from running a
program on every core: a (2048, 2048) product ran at 180 GFLOP/s on this
project's 2-core machine with them, 94 GFLOP/s pinned (PyTorch: 85). So
`pin_to_one_core` also pins the process, on machines without a GPU (one with
`/dev/nvidia0` keeps all its host cores); call it before importing a backend,
so that every thread the backend starts inherits the pinning.

`run_worker` runs a benchmark's worker process with these settings and reads
the JSON line it prints.
"""

import json
import os
import subprocess

ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                 "intra_op_parallelism_threads=1",
}


def pin_to_one_core():
    if os.path.exists("/dev/nvidia0") or not hasattr(os, "sched_setaffinity"):
        return
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def run_worker(command, backend, label, env=None):
    """Runs `command` (a worker printing one JSON line) with one thread and
    `KERAS_BACKEND=backend`, in `env` (default: this process's), and returns
    that line's value; raises with the worker's stderr if it failed."""
    env = dict(os.environ if env is None else env, **ONE_THREAD_ENV,
               KERAS_BACKEND=backend)
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])
