"""Starting a multi-process run and telling its processes apart."""

import os
import tempfile

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.backend import processes


@keras_mtl_export("keras_mtl.distribute.initialize")
def initialize(job_addresses=None, num_processes=None, process_id=None):
    """Joins this process to a multi-process data-parallel run.

    - PyTorch (launched with `torchrun --nproc_per_node=N script.py`):
      starts the default `torch.distributed` process group from the
      variables `torchrun` sets, with gloo on CPU and NCCL on GPU (each
      process then uses the GPU of its `LOCAL_RANK`). `fit` then all-reduces
      the per-task gradients over the processes, and every process starts
      from process 0's weights.
    - JAX: calls `keras.distribution.initialize(job_addresses,
      num_processes, process_id)` (the arguments may come from the
      `KERAS_DISTRIBUTION_*` variables instead); then set a
      `keras.distribution.DataParallel(auto_shard_dataset=False)`.
    - TensorFlow, or a single process: does nothing (`MirroredStrategy`
      runs every replica in one process).

    Args:
        job_addresses: JAX only: the coordinator's `"host:port"` (or every
            process's address, comma-separated).
        num_processes: JAX only: the number of processes.
        process_id: JAX only: this process's index.

    Example:

    >>> keras_mtl.distribute.initialize()  # one process: nothing to do
    >>> keras_mtl.distribute.world_size()
    1
    """
    for name, value in (("num_processes", num_processes),
                        ("process_id", process_id)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(
                f"`{name}` must be a non-negative int. Received: "
                f"{name}={value!r}"
            )
    processes.initialize(job_addresses, num_processes, process_id)


@keras_mtl_export("keras_mtl.distribute.shutdown")
def shutdown():
    """Waits for every process, then ends the multi-process run (call it at
    the end of the script; nothing to do for one process).

    Example:

    >>> keras_mtl.distribute.shutdown()
    """
    processes.shutdown()


@keras_mtl_export("keras_mtl.distribute.rank")
def rank():
    """This process's index in the run (0 for a single process).

    Example:

    >>> keras_mtl.distribute.rank()
    0
    """
    return processes.process_index()


@keras_mtl_export("keras_mtl.distribute.world_size")
def world_size():
    """The number of processes of the run (1 for a single process).

    Example:

    >>> keras_mtl.distribute.world_size()
    1
    """
    return processes.process_count()


@keras_mtl_export("keras_mtl.distribute.is_chief")
def is_chief():
    """Whether this is process 0, the one that writes logs and files.

    Example:

    >>> model_verbose = 2 if keras_mtl.distribute.is_chief() else 0
    """
    return rank() == 0


@keras_mtl_export("keras_mtl.distribute.chief_path")
def chief_path(path):
    """`path` on the chief process, and a path in a temporary folder on
    every other one.

    Give checkpoints (`keras.callbacks.ModelCheckpoint`,
    `BackupAndRestore`) and `model.save` this path: every process then
    runs the same code (JAX's saving waits for all processes), and only the
    chief writes the real file.

    Args:
        path: the file or folder the chief writes.

    Example:

    >>> keras_mtl.distribute.chief_path("model.keras")
    'model.keras'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            f"`path` must be a string or a path. Received: path={path!r}")
    if is_chief():
        return path
    folder = tempfile.mkdtemp(prefix=f"keras_mtl_rank{rank()}_")
    return os.path.join(folder, os.path.basename(os.fspath(path)))
