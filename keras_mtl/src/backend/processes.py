"""The processes of a multi-process data-parallel run, per backend.

- PyTorch: the default `torch.distributed` process group, started from the
  variables `torchrun` sets (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...);
  gloo on CPU, NCCL on GPU.
- JAX: `jax.distributed`, through `keras.distribution.initialize` (its
  arguments or the `KERAS_DISTRIBUTION_*` variables).
- TensorFlow: one process (`MirroredStrategy` runs every replica in it).
"""

import os

import keras

_BACKEND = keras.config.backend()


def initialize(job_addresses=None, num_processes=None, process_id=None):
    """Starts this process's part of a multi-process run (see the module
    docstring); does nothing when the run has one process."""
    if _BACKEND == "torch":
        import torch

        dist = torch.distributed
        if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", 1)) < 2:
            return
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(
            "nccl" if torch.cuda.is_available() else "gloo")
    elif _BACKEND == "jax":
        count = num_processes or int(
            os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", 1))
        if count > 1:
            keras.distribution.initialize(job_addresses, num_processes,
                                          process_id)


def _torch_group():
    """`torch.distributed` while its default process group runs, else
    None."""
    import torch

    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


def process_index():
    if _BACKEND == "jax":
        import jax

        return jax.process_index()
    group = _torch_group() if _BACKEND == "torch" else None
    return group.get_rank() if group else 0


def process_count():
    if _BACKEND == "jax":
        import jax

        return jax.process_count()
    group = _torch_group() if _BACKEND == "torch" else None
    return group.get_world_size() if group else 1


def local_batch_multiple():
    """What each process's share of a batch must be a multiple of: JAX
    splits it over the process's local devices."""
    if _BACKEND == "jax":
        import jax

        return jax.local_device_count()
    return 1


def barrier():
    """Waits for every process."""
    if process_count() == 1:
        return
    if _BACKEND == "torch":
        import torch

        torch.distributed.barrier()
    elif _BACKEND == "jax":
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("keras_mtl.barrier")


def shutdown():
    """Ends a multi-process run (after a barrier)."""
    if process_count() == 1:
        return
    barrier()
    if _BACKEND == "torch":
        import torch

        torch.distributed.destroy_process_group()
    elif _BACKEND == "jax":
        import jax

        jax.distributed.shutdown()
