"""Training on several devices and processes.

`MultiTaskModel` trains data-parallel on every backend with the same
guarantee: each task's gradient of the shared variables is that of the task's
loss on the **global** batch (its masked mean over the labelled samples of
every replica), and the aggregator runs on that global Jacobian, identically
on every replica. N replicas therefore train the same model as one device on
the global batch.

- TensorFlow: build and compile under `tf.distribute.MirroredStrategy`'s
  `scope()`, then `fit`.
- JAX: `keras.distribution.set_distribution(DataParallel(...))` (or
  `ModelParallel`) before building the model; several processes join with
  `initialize(...)`.
- PyTorch: launch with `torchrun --nproc_per_node=N script.py`, call
  `initialize()` first, and feed each process its `ShardedBatches`.

`chief_path`, `is_chief`, `rank`, `world_size` and `shutdown` help write the
same script for one process and many.
"""

from keras_mtl.src.distribute.processes import chief_path
from keras_mtl.src.distribute.processes import initialize
from keras_mtl.src.distribute.processes import is_chief
from keras_mtl.src.distribute.processes import rank
from keras_mtl.src.distribute.processes import shutdown
from keras_mtl.src.distribute.processes import world_size
from keras_mtl.src.distribute.sharded_batches import ShardedBatches
