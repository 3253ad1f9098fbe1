"""`SharedPrivate`: adversarial shared-private multi-task features."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation
from keras_mtl.src.layers.gradient_reversal import GradientReversal


def orthogonality_loss(shared, private, rows=None):
    """`||S^T H||_F^2`: the squared Frobenius norm of the product of the
    shared and private feature matrices (rows: examples), over the rows
    where `rows` (a `(batch,)` 0/1 mask) is 1."""
    if rows is not None:
        rows = ops.cast(rows, shared.dtype)[:, None]
        shared, private = shared * rows, private * rows
    product = ops.matmul(ops.transpose(shared), private)
    return ops.sum(ops.square(product))


@keras_mtl_export("keras_mtl.layers.SharedPrivate")
class SharedPrivate(keras.layers.Layer):
    """Shared and private feature spaces with a task discriminator.

    Adversarial shared-private multi-task learning (ASP-MTL, Liu et al.,
    2017): a shared encoder `S` and one private encoder `P_t` per task;
    task `t` reads `[S(x); P_t(x)]`. Two losses keep them apart, added with
    `add_loss` (so `fit` and `MultiTaskModel` include them):

    - orthogonality, `gamma * sum_t ||S_t^T H_t||_F^2`, with `S_t`, `H_t`
      the shared and private features of task `t`'s examples (all the
      examples when no task ids are given: every example then belongs to
      every task);
    - adversarial, `lambda * CE(task_id, D(GR(S(x))))`: a linear task
      discriminator `D` behind a `GradientReversal`, so that `D` learns to
      tell the tasks apart and `S` learns to prevent it (only when task
      ids are given, e.g. by `keras_mtl.data.interleave(...,
      task_id_key=...)`).

    Defaults `lambda = 0.05`, `gamma = 0.01` are those of the public
    ASP-MTL reimplementations (see the reference notes); the penalty is the
    raw Frobenius norm of the paper's formula, not the reimplementations'
    normalised correlations.

    Args:
        shared: the shared encoder, a Keras layer.
        private: dict mapping task names to their private encoders.
        adversarial_weight: `lambda`. Defaults to `0.05`.
        orthogonality_weight: `gamma`. Defaults to `0.01`.
        reversal_strength: of the gradient reversal. Defaults to `1.0`.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: the encoders' input.
        task_ids: optional `(batch,)` ints, the task index (in `private`'s
            order) of each example.

    Returns:
        Dict mapping each task to `concatenate([S(x), P_t(x)])`.

    Example:

    >>> layer = keras_mtl.layers.SharedPrivate(
    ...     keras.layers.Dense(4), {"a": keras.layers.Dense(2),
    ...                             "b": keras.layers.Dense(2)})
    >>> features = layer(np.ones((3, 5)), task_ids=np.array([0, 1, 1]))
    >>> tuple(features["a"].shape)
    (3, 6)

    Reference:
        Liu, Qiu & Huang, "Adversarial Multi-task Learning for Text
        Classification", ACL 2017.
    """

    def __init__(self, shared, private, adversarial_weight=0.05,
                 orthogonality_weight=0.01, reversal_strength=1.0, **kwargs):
        super().__init__(**kwargs)
        deserialize = keras.saving.deserialize_keras_object
        if isinstance(shared, dict):
            shared = deserialize(shared)
        if not isinstance(shared, keras.layers.Layer):
            raise ValueError(
                f"`shared` must be a Keras layer. Received: shared={shared!r}")
        if not isinstance(private, dict) or not private:
            raise ValueError(
                "`private` must be a non-empty dict of task names to Keras "
                f"layers. Received: private={private!r}")
        private = {t: deserialize(p) if isinstance(p, dict) else p
                   for t, p in private.items()}
        bad = [t for t, p in private.items()
               if not isinstance(p, keras.layers.Layer)]
        if bad:
            raise ValueError(
                f"`private` must map task names to Keras layers; {bad} do "
                f"not. Received: private={private!r}")
        self.shared = shared
        self.private = private
        self.adversarial_weight = validation.check_non_negative(
            "adversarial_weight", adversarial_weight)
        self.orthogonality_weight = validation.check_non_negative(
            "orthogonality_weight", orthogonality_weight)
        self.reversal = GradientReversal(reversal_strength,
                                         name="gradient_reversal")
        self.discriminator = keras.layers.Dense(
            len(private), name="task_discriminator")

    @property
    def tasks(self):
        return list(self.private)

    def build(self, inputs_shape, task_ids_shape=None):
        shared_shape = self.shared.compute_output_shape(inputs_shape)
        for layer, shape in [(self.shared, inputs_shape),
                             (self.reversal, shared_shape),
                             (self.discriminator, shared_shape)] + [
                (p, inputs_shape) for p in self.private.values()]:
            if not layer.built:  # (loaded ones come built)
                layer.build(shape)

    def call(self, inputs, task_ids=None, training=None):
        s = self.shared(inputs)
        features, penalty = {}, 0.0
        for k, (task, encoder) in enumerate(self.private.items()):
            h = encoder(inputs)
            rows = None if task_ids is None else ops.equal(
                ops.reshape(task_ids, (-1,)), k)
            penalty = penalty + orthogonality_loss(s, h, rows)
            features[task] = ops.concatenate([s, h], axis=-1)
        if self.orthogonality_weight:
            self.add_loss(self.orthogonality_weight * ops.cast(penalty,
                                                               "float32"))
        if task_ids is not None and self.adversarial_weight:
            logits = self.discriminator(self.reversal(s))
            labels = ops.reshape(ops.cast(task_ids, "int32"), (-1,))
            adversarial = keras.losses.sparse_categorical_crossentropy(
                labels, ops.cast(logits, "float32"), from_logits=True)
            self.add_loss(self.adversarial_weight * ops.mean(adversarial))
        return features

    def compute_output_shape(self, inputs_shape, task_ids_shape=None):
        shared = self.shared.compute_output_shape(inputs_shape)
        return {
            task: tuple(shared[:-1]) + (
                shared[-1] + layer.compute_output_shape(inputs_shape)[-1],)
            for task, layer in self.private.items()
        }

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "shared": serialize(self.shared),
            "private": {t: serialize(p) for t, p in self.private.items()},
            "adversarial_weight": self.adversarial_weight,
            "orthogonality_weight": self.orthogonality_weight,
            "reversal_strength": self.reversal.strength,
        }
