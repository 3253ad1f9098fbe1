"""One CPU thread per benchmark process, the same for every backend.

`ONE_THREAD_ENV` holds the thread settings of the three backends, for a
worker's environment. They do not stop XLA's CPU client in JAX from running a
program on every core: a (2048, 2048) product ran at 180 GFLOP/s on this
project's 2-core machine with them, 94 GFLOP/s pinned (PyTorch: 85). So
`pin_to_one_core` also pins the process, on machines without a GPU (one with
`/dev/nvidia0` keeps all its host cores); call it before importing a backend,
so that every thread the backend starts inherits the pinning.
"""

import os

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
