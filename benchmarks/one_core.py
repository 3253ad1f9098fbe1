"""Pins a benchmark process to one CPU core on machines without a GPU.

The thread settings (`OMP_NUM_THREADS`, `torch.set_num_threads`, TensorFlow's
and XLA's flags) do not stop XLA's CPU client in JAX from running a program
on every core: a (2048, 2048) product ran at 180 GFLOP/s on this project's
2-core machine with them, 94 GFLOP/s pinned (PyTorch: 85). Call this before
importing a backend, so that every thread it starts inherits the pinning.
On a GPU machine (one with `/dev/nvidia0`) the host keeps all its cores.
"""

import os


def pin_to_one_core():
    """Returns the core used, or None where nothing was pinned."""
    if os.path.exists("/dev/nvidia0") or not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core
