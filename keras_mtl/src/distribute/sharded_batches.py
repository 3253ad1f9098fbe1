"""Each process's share of every global batch of in-memory data."""

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.backend import processes


@keras_mtl_export("keras_mtl.distribute.ShardedBatches")
class ShardedBatches(keras.utils.PyDataset):
    """The batches one process trains on in a multi-process run.

    The data are cut into global batches of `batch_size` samples, in order
    (or in a seeded random order that every process draws alike); process
    `r` of `W` receives the `r`-th of `W` equal consecutive parts of each
    global batch. The processes together therefore see exactly the global
    batches one device would, and `fit` on them trains the same model as one
    device with `batch_size` (`MultiTaskModel` takes every task's masked
    mean over the whole global batch).

    Pass `shuffle=False` to `fit`: Keras would otherwise shuffle the order
    of the batches in each process on its own, so the processes' parts would
    no longer make up the same global batches. Shuffle here instead
    (`shuffle=True` with a `seed`), which every process does alike.

    Equal parts: a global batch that does not split evenly (the last one)
    loses its last `n mod W` samples (on JAX, so that each part also splits
    over the process's local devices); a batch with fewer samples than
    that is left out.

    Args:
        x: inputs: an array or a structure (dict, list) of arrays with the
            same number of samples.
        y: labels (a dict `{task: array}`), or None.
        sample_weight: sample weights (an array or a dict per task), or
            None.
        batch_size: the global batch size, summed over the processes.
        shuffle: draw a new order of the samples at every epoch (the same
            order on every process).
        seed: the seed of that order.
        rank, world_size: this process and the number of processes
            (default: those of `keras_mtl.distribute.initialize`).
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).

    Example:

    >>> x = np.arange(10, dtype="float32")[:, None]
    >>> y = {"a": np.arange(10, dtype="float32")}
    >>> shard = keras_mtl.distribute.ShardedBatches(
    ...     x, y, batch_size=4, rank=1, world_size=2)
    >>> len(shard), shard[0][0][:, 0].tolist(), shard[2][0][:, 0].tolist()
    (3, [2.0, 3.0], [9.0])
    """

    def __init__(self, x, y=None, sample_weight=None, *, batch_size,
                 shuffle=False, seed=None, rank=None, world_size=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.world_size = (processes.process_count() if world_size is None
                           else world_size)
        self.rank = processes.process_index() if rank is None else rank
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(
                "`world_size` must be a positive int. Received: "
                f"world_size={world_size!r}")
        if not isinstance(self.rank, int) or not (
                0 <= self.rank < self.world_size):
            raise ValueError(
                f"`rank` must be an int in [0, {self.world_size}). "
                f"Received: rank={rank!r}")
        if not isinstance(batch_size, int) or batch_size < self.world_size:
            raise ValueError(
                "`batch_size` (the global batch) must be an int of at least "
                f"one sample per process ({self.world_size}). Received: "
                f"batch_size={batch_size!r}")
        if isinstance(sample_weight, dict) and isinstance(y, dict):
            # Keras takes no None in a dict of weights: ones weigh alike.
            count = len(next(iter(keras.tree.flatten(y))))
            sample_weight = {
                k: np.ones((count,), "float32") if w is None else w
                for k, w in sample_weight.items()}
        self.data = (x, y, sample_weight)
        sizes = {len(a) for a in keras.tree.flatten(self.data)
                 if a is not None}
        if len(sizes) != 1:
            raise ValueError(
                "`x`, `y` and `sample_weight` must hold the same number of "
                f"samples. Received: sizes {sorted(sizes)}")
        self.num_samples = sizes.pop()
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.epoch = 0
        self.multiple = processes.local_batch_multiple()
        self.order = self._order()

    def _order(self):
        if not self.shuffle:
            return np.arange(self.num_samples)
        rng = np.random.default_rng(
            None if self.seed is None else [self.seed, self.epoch])
        return rng.permutation(self.num_samples)

    def _part(self, size):
        part = size // self.world_size
        return part - part % self.multiple

    @property
    def num_batches(self):
        full, last = divmod(self.num_samples, self.batch_size)
        return full + (1 if last and self._part(last) > 0 else 0)

    def __len__(self):
        return self.num_batches

    def __getitem__(self, index):
        if not 0 <= index < self.num_batches:
            raise IndexError(
                f"Batch index out of range [0, {self.num_batches}). "
                f"Received: index={index}")
        start = index * self.batch_size
        size = min(self.batch_size, self.num_samples - start)
        part = self._part(size)
        first = start + self.rank * part
        chosen = self.order[first: first + part]
        batch = keras.tree.map_structure(
            lambda a: None if a is None else np.asarray(a)[chosen],
            self.data)
        x, y, sample_weight = batch
        if sample_weight is not None:
            return x, y, sample_weight
        return (x,) if y is None else (x, y)

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()
