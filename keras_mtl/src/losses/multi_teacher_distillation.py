"""`MultiTeacherDistillation`: distilling several teachers into a student."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export


def _check_weights(weights):
    if weights is None:
        return None
    if (
        not isinstance(weights, (list, tuple))
        or not weights
        or any(isinstance(w, bool) or not isinstance(w, numbers.Real)
               or not w >= 0 for w in weights)
        or not sum(weights) > 0
    ):
        raise ValueError(
            "`teacher_weights` must be a non-empty list of non-negative "
            f"numbers, not all zero. Received: teacher_weights={weights!r}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


@keras_mtl_export("keras_mtl.losses.teacher_weights_from_similarity")
def teacher_weights_from_similarity(similarities, temperature=1.0):
    """Teacher weights from task similarities: `softmax(s / temperature)`.

    Borup et al. (2023) weight source models by their relevance to the
    target without publishing a formula; this is keras_mtl's choice, which
    tends to the most similar teacher alone (their "DistillNearest") as
    `temperature` goes to 0 and to equal weights as it grows.

    Args:
        similarities: one number per teacher (e.g. the task-affinity or
            gradient-cosine score of its task with the student's).
        temperature: positive number. Defaults to `1.0`.

    Returns:
        A list of weights summing to 1.

    Example:

    >>> keras_mtl.losses.teacher_weights_from_similarity([0.0, 0.0])
    [0.5, 0.5]
    """
    values = np.asarray(similarities, "float64")
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(
            "`similarities` must be a non-empty list of finite numbers. "
            f"Received: similarities={similarities!r}")
    if not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(
            "`temperature` must be a positive number. "
            f"Received: temperature={temperature!r}")
    scaled = values / temperature
    weights = np.exp(scaled - scaled.max())
    return (weights / weights.sum()).tolist()


@keras_mtl_export("keras_mtl.losses.MultiTeacherDistillation")
class MultiTeacherDistillation(keras.losses.Loss):
    """Knowledge distillation from several teachers, weighted.

    For student logits `s` and teacher logits `t_j`, the per-example loss is
    `sum_j w_j T^2 CE(softmax(t_j / T), softmax(s / T))` (Hinton et al.,
    2015, with one term per teacher; the `T^2` keeps gradient scales
    independent of `T`, as in ZSCL's `CE(s/T, softmax(t/T)) T^2`). The
    weights `w_j` are fixed (`teacher_weights`, normalised to sum 1; equal
    by default) or from task similarity
    (`teacher_weights_from_similarity`).

    Pass the teachers' logits as the labels, stacked on axis 1:
    `y_true` of shape `(batch, num_teachers, classes)`, `y_pred` of shape
    `(batch, classes)`. In a `MultiTaskModel`, rows whose teacher logits are
    NaN are left out, like missing labels.

    Args:
        temperature: `T`. Defaults to `2.0` (ZSCL's).
        teacher_weights: one non-negative weight per teacher, or `None`
            for equal weights. Defaults to `None`.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: defaults to `"multi_teacher_distillation"`.
        dtype: loss dtype. Defaults to `None`.

    Example:

    >>> loss = keras_mtl.losses.MultiTeacherDistillation(
    ...     teacher_weights=[3.0, 1.0])
    >>> teachers = np.zeros((2, 2, 4), "float32")  # two uniform teachers
    >>> float(loss(teachers, np.zeros((2, 4), "float32")))  # T^2 log 4
    5.545...
    """

    # `MultiTaskModel` accepts `(batch, teachers) + prediction shape` labels.
    stacked_labels = True

    def __init__(self, temperature=2.0, teacher_weights=None,
                 reduction="sum_over_batch_size",
                 name="multi_teacher_distillation", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(
                "`temperature` must be a positive number. "
                f"Received: temperature={temperature!r}")
        self.temperature = float(temperature)
        self.teacher_weights = _check_weights(teacher_weights)

    def call(self, y_true, y_pred):
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_true.shape) != len(y_pred.shape) + 1:
            raise ValueError(
                "`y_true` must stack the teachers' logits on axis 1: shape "
                "(batch, num_teachers, ...) for `y_pred` of shape (batch, "
                f"...). Received: y_true shape {tuple(y_true.shape)}, y_pred "
                f"shape {tuple(y_pred.shape)}")
        count = y_true.shape[1]
        weights = self.teacher_weights
        if weights is None:
            weights = [1.0 / count] * count
        if len(weights) != count:
            raise ValueError(
                f"{len(weights)} teacher weights for {count} teachers.")
        t = self.temperature
        student = ops.log_softmax(ops.cast(y_pred, "float32") / t, axis=-1)
        teachers = ops.softmax(ops.cast(y_true, "float32") / t, axis=-1)
        cross = -ops.sum(teachers * student[:, None], axis=-1)
        cross = ops.reshape(cross, (ops.shape(cross)[0], count, -1))
        per_teacher = ops.mean(cross, axis=-1)  # over extra axes
        return t * t * ops.sum(per_teacher * ops.convert_to_tensor(
            weights, "float32"), axis=1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature,
                "teacher_weights": self.teacher_weights}
