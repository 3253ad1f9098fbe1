"""`ConflictMonitor`: task weights and gradient conflicts during training."""

import warnings

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.backend.scalar_summaries import ScalarWriter


def gramian_statistics(gramian):
    """The per-task gradient norms `(T,)` and the pairwise cosines `(T, T)`
    of a task Gramian `G = J J^T`; a pair with a zero gradient has cosine
    NaN."""
    gramian = np.asarray(gramian, dtype=np.float64)
    norms = np.sqrt(np.maximum(np.diag(gramian), 0.0))
    outer = np.outer(norms, norms)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines = np.where(outer > 0.0, gramian / outer, np.nan)
    return norms, np.clip(cosines, -1.0, 1.0)


@keras_mtl_export("keras_mtl.callbacks.ConflictMonitor")
class ConflictMonitor(keras.callbacks.Callback):
    """Records the task weights, per-task gradient norms and pairwise
    gradient cosines of a `MultiTaskModel`'s training steps.

    The values come from the step itself: the task weights the aggregator
    chose, and the `T x T` Gramian `G = J J^T` of the per-task gradients it
    aggregated (the Gramian rules compute it anyway; for the rules that
    read the gradients directly the step adds one `T x T` product). No
    extra forward or backward pass is run. The norms are `sqrt(G_ii)` and
    the cosines `G_ij / sqrt(G_ii G_jj)`, of the gradients of the shared
    variables (`gradient_mode="parameters"` or `"gramian"`) or of the
    shared features (`"features"`). Loss-level rules (e.g.
    `"uncertainty_weighting"`, `"dwa"`) compute no per-task gradients: for
    them only the weights are recorded, and the norms and cosines are NaN.
    Steps skipped as non-finite are left out.

    Every `every` training steps the monitor reads the model's running
    sums: a record holds the weights and the Gramian statistics of the mean
    Gramian over the steps since the last record (exactly one step's with
    `every=1`). The records are kept in `history`; at the end of each epoch
    their means are added to the epoch logs, hence to the `History` (and to
    Keras' `TensorBoard` callback when it comes after this one in the
    list): `<task>_grad_norm` and `cos_<task_a>_<task_b>`. With `log_dir`,
    every record is also written to TensorBoard as `task_weight/<task>`,
    `grad_norm/<task>` and `cosine/<task_a>_<task_b>` at its step.

    On JAX, reading the sums synchronises the model's variables with the
    training state (`jax_state_sync`), which costs about one copy of the
    variables: raise `every` on large models.

    Args:
        every: record every this many training steps. Defaults to 1.
        log_dir: optional TensorBoard log directory for the per-step
            records (needs TensorFlow installed; any backend may train).
        epoch_logs: add the epoch means to the logs. Defaults to True.

    Attributes:
        history: dict of NumPy arrays over the records: `"step"` `(n,)`
            (steps trained since `fit` began), `"task_weights"` `(n, T)`,
            `"grad_norms"` `(n, T)` and `"cosines"` `(n, T, T)`.
        task_names: the tasks (or the groups of `compile(task_groups=...)`),
            in the arrays' order.

    Example:

    >>> x = keras.Input((4,))
    >>> h = keras.layers.Dense(8, name="trunk")(x)
    >>> model = keras_mtl.MultiTaskModel(
    ...     x, {"a": keras.layers.Dense(1, name="a")(h),
    ...         "b": keras.layers.Dense(1, name="b")(h)})
    >>> model.compile("sgd", loss="mse", aggregator="mgda")
    >>> monitor = keras_mtl.callbacks.ConflictMonitor()
    >>> data = np.random.rand(32, 4).astype("float32")
    >>> history = model.fit(data, {"a": data[:, :1], "b": -data[:, 1:2]},
    ...                     batch_size=8, epochs=2, callbacks=[monitor],
    ...                     verbose=0)
    >>> monitor.history["cosines"].shape
    (8, 2, 2)
    >>> "cos_a_b" in history.history
    True
    """

    def __init__(self, every=1, log_dir=None, epoch_logs=True):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or (
                every < 1):
            raise ValueError(
                f"`every` must be a positive int. Received: every={every!r}")
        self.every = every
        self.log_dir = log_dir
        self.epoch_logs = bool(epoch_logs)
        self.task_names = ()
        self._history = None
        self._sums_metric = None
        self._writer = None
        self._records = []
        self._epoch_records = 0
        self._steps = 0
        self._epoch_offset = 0
        self._read_at = 0
        self._last = None
        self._in_epoch = False
        self._warned = False

    def set_model(self, model):
        track = getattr(model, "track_conflicts", None)
        if track is None:
            raise ValueError(
                "ConflictMonitor reads the training steps of a "
                "keras_mtl.MultiTaskModel (or MultiTaskTrainer). Received: "
                f"a {type(model).__name__}")
        super().set_model(model)
        self._sums_metric = track()
        # The groups of `compile(task_groups=...)`, if any, else the tasks.
        self.task_names = tuple(model.balancer.balanced_names)

    # ------------------------------------------------------------ events

    def on_train_begin(self, logs=None):
        self._records = []
        self._history = None
        self._steps = self._epoch_offset = self._read_at = 0
        if self.log_dir is not None and self._writer is None:
            self._writer = ScalarWriter(self.log_dir)

    def on_epoch_begin(self, epoch, logs=None):
        # Keras resets the metric states (the sums) as an epoch begins.
        self._last = self._zero_sums()
        self._epoch_offset = self._read_at = self._steps
        self._epoch_records = len(self._records)
        self._in_epoch = True

    def on_train_batch_end(self, batch, logs=None):
        self._steps = self._epoch_offset + batch + 1
        if self._steps - self._read_at >= self.every:
            self._read()

    def on_test_begin(self, logs=None):
        # Validation inside `fit` resets the metric states: read first.
        if self._in_epoch:
            self._read()

    def on_epoch_end(self, epoch, logs=None):
        self._read()
        self._in_epoch = False
        if self.epoch_logs and logs is not None:
            logs.update(self._epoch_means(self._records[self._epoch_records:]))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ----------------------------------------------------------- reading

    def _zero_sums(self):
        t = len(self.task_names)
        return {"weight_sum": np.zeros(t), "weight_count": 0.0,
                "gramian_sum": np.zeros((t, t)), "gramian_count": 0.0}

    def _sums(self):
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        metric = self._sums_metric
        return {
            name: np.asarray(keras.ops.convert_to_numpy(
                getattr(metric, name)), dtype=np.float64)
            for name in ("weight_sum", "weight_count", "gramian_sum",
                         "gramian_count")
        }

    def _read(self):
        """Adds a record of the steps since the last read, if any."""
        if self._steps == self._read_at:
            return
        sums = self._sums()
        delta = {k: sums[k] - self._last[k] for k in sums}
        self._last = sums
        self._read_at = self._steps
        t = len(self.task_names)
        weights = np.full(t, np.nan)
        if delta["weight_count"] > 0:
            weights = delta["weight_sum"] / delta["weight_count"]
        norms, cosines = np.full(t, np.nan), np.full((t, t), np.nan)
        if delta["gramian_count"] > 0:
            norms, cosines = gramian_statistics(
                delta["gramian_sum"] / delta["gramian_count"])
        elif delta["weight_count"] > 0 and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self.model.aggregator).__name__} computes no "
                "per-task gradients (a loss-level rule): ConflictMonitor "
                "records its task weights; gradient norms and cosines are "
                "NaN.", stacklevel=2)
        self._records.append((self._steps, weights, norms, cosines))
        self._history = None
        if self._writer is not None:
            self._writer.write(self._summaries(weights, norms, cosines),
                               self._steps)

    @property
    def history(self):
        """The records as arrays (see the class docstring), stacked when
        first read after a new record."""
        if self._history is None:
            self._history = self._arrays()
        return self._history

    @history.setter
    def history(self, value):
        self._history = value

    def _arrays(self):
        t = len(self.task_names)
        if not self._records:
            return {"step": np.zeros((0,), int),
                    "task_weights": np.zeros((0, t)),
                    "grad_norms": np.zeros((0, t)),
                    "cosines": np.zeros((0, t, t))}
        steps, weights, norms, cosines = zip(*self._records)
        return {"step": np.array(steps), "task_weights": np.stack(weights),
                "grad_norms": np.stack(norms), "cosines": np.stack(cosines)}

    def _pairs(self):
        names = self.task_names
        return [(i, j, names[i], names[j]) for i in range(len(names))
                for j in range(i + 1, len(names))]

    def _summaries(self, weights, norms, cosines):
        """One record as TensorBoard scalars."""
        scalars = {f"task_weight/{t}": w
                   for t, w in zip(self.task_names, weights)}
        scalars.update({f"grad_norm/{t}": n
                        for t, n in zip(self.task_names, norms)})
        scalars.update({f"cosine/{a}_{b}": cosines[i, j]
                        for i, j, a, b in self._pairs()})
        return scalars

    def _epoch_means(self, records):
        """The epoch logs: mean norms and cosines of the epoch's records."""
        if not records:
            return {}
        _, _, norms, cosines = zip(*records)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            norms = np.nanmean(np.stack(norms), axis=0)
            cosines = np.nanmean(np.stack(cosines), axis=0)
        logs = {f"{t}_grad_norm": float(n)
                for t, n in zip(self.task_names, norms)}
        logs.update({f"cos_{a}_{b}": float(cosines[i, j])
                     for i, j, a, b in self._pairs()})
        return logs

    def mean_cosines(self):
        """The mean pairwise cosine matrix over every record (NaN where no
        record has one)."""
        cosines = self.history.get("cosines")
        if cosines is None or not len(cosines):
            t = len(self.task_names)
            return np.full((t, t), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(cosines, axis=0)
