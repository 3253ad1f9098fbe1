"""`interleave`: one training stream from separate per-task datasets.

Each task has its own examples, `(x, y)` arrays or a batch source; every
batch of the stream holds examples of one or several tasks, with the
labels of the other tasks missing (NaN, or sample weight 0), which
`keras_mtl.MultiTaskModel` leaves out of their losses.
"""

import math
import numbers

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export

SCHEDULES = ("proportional", "temperature", "round_robin", "sequential")
BATCHES = ("mixed", "per_task")
MISSING = ("nan", "sample_weight")


def _is_array_source(source):
    return isinstance(source, tuple) and len(source) in (2, 3) and all(
        _is_arrays(part) for part in source)


def _is_arrays(structure):
    leaves = keras.tree.flatten(structure)
    return bool(leaves) and all(hasattr(leaf, "shape") and hasattr(
        leaf, "dtype") for leaf in leaves)


def _rows(structure):
    return int(keras.tree.flatten(structure)[0].shape[0])


def _take(structure, index):
    return keras.tree.map_structure(lambda a: np.asarray(a)[index],
                                    structure)


class _ArraySource:
    """A task's arrays, drawn in shuffled order without replacement."""

    def __init__(self, task, source, rng, shuffle):
        self.x, self.y = source[0], np.asarray(source[1])
        self.w = None if len(source) < 3 else np.asarray(source[2])
        sizes = {_rows(p) for p in source if p is not None}
        if len(sizes) != 1:
            raise ValueError(
                f"The arrays of task {task!r} have different numbers of "
                f"rows {sorted(sizes)}.")
        self.size = sizes.pop()
        if self.size == 0:
            raise ValueError(f"Task {task!r} has no examples.")
        self.rng, self.shuffle = rng, shuffle
        self.order, self.position = self._permutation(), 0
        self.label_spec = (self.y.shape[1:], self.y.dtype)

    def _permutation(self):
        if self.shuffle:
            return self.rng.permutation(self.size)
        return np.arange(self.size)

    def draw(self, count):
        """`count` row indices, reshuffling when the data runs out."""
        taken = []
        while count:
            if self.position == self.size:
                self.order, self.position = self._permutation(), 0
            step = min(count, self.size - self.position)
            taken.append(self.order[self.position:self.position + step])
            self.position += step
            count -= step
        return np.concatenate(taken)

    def batch(self, index):
        weights = None if self.w is None else self.w[index]
        return _take(self.x, index), self.y[index], weights


class _BatchSource:
    """A task's ready-made batches: a `PyDataset` or an iterable (a
    generator, a `tf.data.Dataset`) yielding `(x, y)` or `(x, y, w)`. The
    first batch is read at once (it tells the labels' shape)."""

    def __init__(self, task, source, size):
        self.task, self.source, self.size = task, source, size
        self.iterator, self.position = None, 0
        self.pending = self._read()
        self.label_spec = (self.pending[1].shape[1:], self.pending[1].dtype)

    def _read(self):
        if isinstance(self.source, keras.utils.PyDataset):
            batch = self.source[self.position % len(self.source)]
            self.position += 1
        else:
            if self.iterator is None:
                self.iterator = iter(self.source)
            try:
                batch = next(self.iterator)
            except StopIteration:
                self.iterator = iter(self.source)
                if self.iterator is self.source:
                    raise ValueError(
                        f"The batch source of task {self.task!r} is "
                        "exhausted and cannot restart (a generator); pass a "
                        "re-iterable source or an endless generator."
                    ) from None
                try:
                    batch = next(self.iterator)
                except StopIteration:
                    raise ValueError(
                        f"The batch source of task {self.task!r} is empty."
                    ) from None
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError(
                f"The batch source of task {self.task!r} must yield (x, y) or "
                f"(x, y, sample_weight). Received: {type(batch).__name__}")
        x = keras.tree.map_structure(np.asarray, batch[0])
        weights = None if len(batch) < 3 else np.asarray(batch[2])
        return x, np.asarray(batch[1]), weights

    def next_batch(self):
        batch, self.pending = self.pending, None
        return batch if batch is not None else self._read()


def schedule_probabilities(schedule, sizes, temperature, epoch):
    """`{task: p}` of a sampling schedule for tasks of `sizes` examples."""
    if callable(schedule):
        weights = schedule(epoch, dict(sizes))
        if not isinstance(weights, dict) or set(weights) != set(sizes) or any(
                not isinstance(w, numbers.Real) or not w >= 0
                for w in weights.values()) or not sum(weights.values()) > 0:
            raise ValueError(
                "A schedule callable must return a dict of non-negative "
                f"weights, one per task {sorted(sizes)}, not all zero. "
                f"Received: {weights!r}")
    elif schedule == "proportional":
        weights = dict(sizes)
    elif schedule == "temperature":
        weights = {t: n ** (1.0 / temperature) for t, n in sizes.items()}
    else:
        weights = {t: 1.0 for t in sizes}
    total = float(sum(weights.values()))
    return {t: weights[t] / total for t in sizes}


@keras_mtl_export("keras_mtl.data.InterleavedDataset")
class InterleavedDataset(keras.utils.PyDataset):
    """The stream `keras_mtl.data.interleave` returns (a `PyDataset`).

    Each item is `(x, y)` or, with `missing="sample_weight"`,
    `(x, y, sample_weight)`, where `y` and `sample_weight` are dicts with one
    entry per task. `probabilities` gives the current epoch's task sampling
    probabilities; `task_counts` counts the examples of each task served
    so far. See `interleave` for the arguments.

    Args:
        datasets: see `interleave`.
        batch_size: see `interleave`.
        schedule: see `interleave`.
        temperature: see `interleave`.
        batches: see `interleave`.
        steps_per_epoch: see `interleave`.
        missing: see `interleave`.
        sizes: see `interleave`.
        shuffle: see `interleave`.
        seed: see `interleave`.
        task_id_key: see `interleave`.

    Example:

    >>> stream = keras_mtl.data.InterleavedDataset(
    ...     {"a": (np.ones((6, 2)), np.ones((6, 1)))}, batch_size=4)
    >>> len(stream)
    2
    """

    def __init__(self, datasets, batch_size=32, schedule="proportional",
                 temperature=2.0, batches="mixed", steps_per_epoch=None,
                 missing="nan", sizes=None, shuffle=True, seed=None,
                 task_id_key=None):
        super().__init__()
        if task_id_key is not None and not isinstance(task_id_key, str):
            raise ValueError(
                "`task_id_key` must be a string or None. "
                f"Received: task_id_key={task_id_key!r}")
        self.task_id_key = task_id_key
        _check_arguments(datasets, batch_size, schedule, temperature, batches,
                         steps_per_epoch, missing, sizes, shuffle)
        self.tasks = list(datasets)
        self.batch_size = batch_size
        self.schedule, self.temperature = schedule, temperature
        self.batches, self.missing = batches, missing
        self.rng = np.random.default_rng(seed)
        sizes = dict(sizes or {})
        self.sources = {}
        for task, source in datasets.items():
            if _is_array_source(source):
                self.sources[task] = _ArraySource(task, source, self.rng,
                                                  shuffle)
            else:
                if batches == "mixed":
                    raise ValueError(
                        f"Task {task!r} gives ready-made batches, which "
                        "`batches=\"mixed\"` cannot split; use "
                        "`batches=\"per_task\"`.")
                self.sources[task] = _BatchSource(task, source,
                                                  sizes.get(task))
        self.sizes = {t: sizes.get(t, getattr(s, "size", None))
                      for t, s in self.sources.items()}
        unknown = [t for t, n in self.sizes.items() if n is None]
        if unknown and (schedule in ("proportional", "temperature")
                        or callable(schedule) or schedule == "sequential"):
            raise ValueError(
                f"The sizes of tasks {unknown} are unknown (batch sources); "
                "pass `sizes={task: number_of_examples}` or "
                "`schedule=\"round_robin\"`.")
        if unknown and steps_per_epoch is None:
            raise ValueError(
                f"The sizes of tasks {unknown} are unknown; pass "
                "`steps_per_epoch`.")
        self.steps = steps_per_epoch or self._default_steps()
        self.task_counts = {t: 0 for t in self.tasks}
        self.epoch = 0
        self._plan_epoch()

    def _default_steps(self):
        if self.schedule == "sequential":
            return sum(math.ceil(n / self.batch_size)
                       for n in self.sizes.values())
        return max(1, math.ceil(sum(self.sizes.values()) / self.batch_size))

    def _plan_epoch(self):
        """The task of every row (mixed) or batch (per task) of the epoch."""
        if self.schedule == "sequential":
            self.probabilities = schedule_probabilities(
                "proportional", self.sizes, self.temperature, self.epoch)
            self.plan = []
            for task in self.tasks:
                size = self.sizes[task]
                for start in range(0, size, self.batch_size):
                    rows = np.arange(start, min(size, start + self.batch_size))
                    self.plan.append([(task, rows)])
            return
        probabilities = schedule_probabilities(
            self.schedule, self.sizes, self.temperature, self.epoch)
        self.probabilities = probabilities
        p = np.array([probabilities[t] for t in self.tasks])
        per_step = self.batch_size if self.batches == "mixed" else 1
        count = self.steps * per_step
        if self.schedule == "round_robin":
            choice = np.arange(count) % len(self.tasks)
        else:
            choice = self.rng.choice(len(self.tasks), size=count, p=p)
        self.plan = []
        for step in range(self.steps):
            picked = choice[step * per_step:(step + 1) * per_step]
            groups = []
            for k, task in enumerate(self.tasks):
                rows = int(np.sum(picked == k)) * (
                    1 if self.batches == "mixed" else self.batch_size)
                if rows:
                    source = self.sources[task]
                    index = (source.draw(rows)
                             if isinstance(source, _ArraySource) else None)
                    groups.append((task, index))
            self.plan.append(groups)

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, index):
        parts = []
        for task, rows in self.plan[index]:
            source = self.sources[task]
            if rows is None:
                parts.append((task, *source.next_batch()))
            else:
                parts.append((task, *source.batch(rows)))
        return self._assemble(parts)

    def _assemble(self, parts):
        xs = [x for _, x, _, _ in parts]
        try:
            x = keras.tree.map_structure(
                lambda *leaves: np.concatenate(leaves, axis=0), *xs)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "The tasks' inputs must have the same structure and trailing "
                f"shapes to share a batch: {error}") from error
        if self.task_id_key is not None:
            if not isinstance(x, dict) or self.task_id_key in x:
                raise ValueError(
                    "`task_id_key` needs dict inputs without that key; "
                    f"received inputs of type {type(x).__name__}.")
            x = dict(x)
            x[self.task_id_key] = np.concatenate([
                np.full(_rows(part_x), self.tasks.index(task), "int32")
                for task, part_x, _, _ in parts])
        total = sum(_rows(p[1]) for p in parts)
        y, weights = {}, {}
        offset = 0
        spans = {}
        for task, part_x, part_y, part_w in parts:
            rows = _rows(part_x)
            spans[task] = (offset, offset + rows, part_y, part_w)
            offset += rows
            self.task_counts[task] += rows
        for task in self.tasks:
            shape, dtype = self.sources[task].label_spec
            if self.missing == "nan":
                if not np.issubdtype(dtype, np.floating):
                    raise ValueError(
                        f"Task {task!r} has {dtype} labels, which cannot "
                        "hold NaN; pass `missing=\"sample_weight\"`.")
                labels = np.full((total,) + shape, np.nan, "float32")
            else:
                labels = np.zeros((total,) + shape, dtype)
            weight = np.zeros((total,), "float32")
            if task in spans:
                start, stop, part_y, part_w = spans[task]
                labels[start:stop] = part_y
                weight[start:stop] = 1.0 if part_w is None else part_w
            y[task] = labels
            weights[task] = weight
        if self.missing == "nan":
            return x, y
        return x, y, weights

    def on_epoch_end(self):
        self.epoch += 1
        self._plan_epoch()


def _check_arguments(datasets, batch_size, schedule, temperature, batches,
                     steps_per_epoch, missing, sizes, shuffle):
    if not isinstance(datasets, dict) or not datasets or not all(
            isinstance(t, str) and t for t in datasets):
        raise ValueError(
            "`datasets` must be a non-empty dict mapping task names to (x, "
            f"y) arrays or batch sources. Received: datasets={datasets!r}")
    for name, value, low in (("batch_size", batch_size, 1),
                             ("steps_per_epoch", steps_per_epoch, 1)):
        if value is None and name == "steps_per_epoch":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or (
                value < low):
            raise ValueError(
                f"`{name}` must be a positive int. Received: {name}={value!r}")
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(
            f"`schedule` must be one of {SCHEDULES} or a callable "
            f"`(epoch, sizes) -> weights`. Received: schedule={schedule!r}")
    if not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(
            "`temperature` must be a positive number. "
            f"Received: temperature={temperature!r}")
    if batches not in BATCHES:
        raise ValueError(
            f"`batches` must be one of {BATCHES}. Received: batches="
            f"{batches!r}")
    if missing not in MISSING:
        raise ValueError(
            f"`missing` must be one of {MISSING}. Received: missing="
            f"{missing!r}")
    if sizes is not None and (not isinstance(sizes, dict) or any(
            t not in datasets or isinstance(n, bool)
            or not isinstance(n, int) or n < 1 for t, n in sizes.items())):
        raise ValueError(
            "`sizes` must map tasks of `datasets` to positive ints. "
            f"Received: sizes={sizes!r}")
    if not isinstance(shuffle, bool):
        raise ValueError(f"`shuffle` must be a bool. Received: {shuffle!r}")


@keras_mtl_export("keras_mtl.data.interleave")
def interleave(datasets, batch_size=32, schedule="proportional",
               temperature=2.0, batches="mixed", steps_per_epoch=None,
               missing="nan", sizes=None, shuffle=True, seed=None,
               task_id_key=None):
    """One training stream from separate per-task datasets.

    Each task has its own examples (LibMTL's `multi_input` setting: data
    sets of different sizes, each labelled for one task). The stream's
    batches hold examples of one task (`batches="per_task"`) or of several
    (`batches="mixed"`), with every other task's labels missing: NaN
    (`missing="nan"`, float labels) or present with sample weight 0
    (`missing="sample_weight"`, any dtype; the stream then yields
    `(x, y, sample_weight)`). `keras_mtl.MultiTaskModel` leaves missing
    labels out of each task's loss and metrics. All tasks must share the
    input structure.

    Tasks are drawn by `schedule`:

    - `"proportional"`: task `t` with probability `n_t / sum n`;
    - `"temperature"`: `p_t` proportional to `n_t^(1 / temperature)`
      (`temperature=1` is proportional, large values approach uniform);
    - `"round_robin"`: tasks in turn (rows in turn for mixed batches);
    - `"sequential"`: every example once, task after task, in order (for
      `evaluate` and validation data);
    - a callable `schedule(epoch, sizes) -> {task: weight}`, called at the
      start of every epoch: curricula, e.g. decaNLP's anti-curriculum
      (first the hardest task alone, then all).

    Within a task, examples are drawn without replacement in a shuffled
    order, reshuffled when exhausted.

    Args:
        datasets: dict mapping task names to `(x, y)` or `(x, y,
            sample_weight)` arrays (`x` may be a dict or list of arrays), or
            to a batch source yielding such tuples: a
            `keras.utils.PyDataset`, a generator or any iterable (e.g. a
            `tf.data.Dataset`); batch sources need `batches="per_task"`.
        batch_size: examples per batch (for batch sources, their own).
            Defaults to `32`.
        schedule: see above. Defaults to `"proportional"`.
        temperature: for `schedule="temperature"`. Defaults to `2.0`.
        batches: `"mixed"` or `"per_task"`. Defaults to `"mixed"`.
        steps_per_epoch: batches per epoch. Defaults to `None`: all the
            examples once (`ceil(sum n / batch_size)`).
        missing: `"nan"` or `"sample_weight"`. Defaults to `"nan"`.
        sizes: dict of example counts for batch sources (needed by the
            size-based schedules). Defaults to `None`.
        shuffle: shuffle each task's examples. Defaults to `True`.
        seed: seed of the sampling. Defaults to `None`.
        task_id_key: if given, the inputs (dicts) get this extra entry:
            each example's task index in `datasets`' order (int32), e.g.
            for `keras_mtl.layers.SharedPrivate`'s task discriminator.
            Defaults to `None`.

    Returns:
        An `InterleavedDataset` (a `keras.utils.PyDataset`) for `fit`,
        `evaluate` or `validation_data`, on every backend.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> stream = keras_mtl.data.interleave(
    ...     {"big": (rng.normal(size=(90, 3)), rng.normal(size=(90, 1))),
    ...      "small": (rng.normal(size=(10, 3)), rng.normal(size=(10, 1)))},
    ...     batch_size=20, seed=0)
    >>> x, y = stream[0]
    >>> x.shape, sorted(y)
    ((20, 3), ['big', 'small'])
    >>> stream.probabilities
    {'big': 0.9, 'small': 0.1}
    """
    return InterleavedDataset(datasets, batch_size, schedule, temperature,
                              batches, steps_per_epoch, missing, sizes,
                              shuffle, seed, task_id_key)
