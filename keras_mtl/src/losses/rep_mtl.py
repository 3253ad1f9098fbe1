"""`RepMTL`: regularisers on the task saliency of the shared features."""

import keras
from keras import ops

from keras_mtl.src.aggregators.arg_checks import check_finite
from keras_mtl.src.api_export import keras_mtl_export

# Keeps the entropy and the normalisations finite at zero saliency.
EPSILON = 1e-12


@keras_mtl_export("keras_mtl.losses.RepMTL")
class RepMTL:
    """Rep-MTL's regularisers of the task saliency (Wang, Li & Xu, ICCV 2025).

    The saliency of task `t` is `S_t = dL_t / dZ`, the gradient of its loss
    with respect to the shared features `Z` (`(B, ..., C)`: a batch of
    vectors, sequences or feature maps with `C` channels last; the middle
    axes, flattened to `N` positions, are the "space"). Two terms:

    - **Task-specific saliency regulation** (TSR, entropy): with
      `s_t = mean_c S_t` at each sample and position `i` and
      `P_it = |s_it| / sum_k |s_ik|`, `L_tsr = mean_i (-sum_t P_it log P_it)`;
      low entropy keeps each position's saliency to few tasks (against
      negative transfer).
    - **Cross-task saliency alignment** (CSA, contrastive): for sample `b`,
      the anchor is `A_b A_b^T` with `A_b` the `(C, T)` matrix of the
      tasks' spatially averaged saliencies, and task `t`'s view is
      `M_tb = S_tb^T S_tb` (`C x C`, summed over positions); both are
      flattened and L2-normalised. Each view is pulled to its own sample's
      anchor and pushed from the other samples' anchors:
      `L_csa = mean_{b,t} -log(exp(sim(a_b, m_tb) / tau) / (exp(sim(a_b,
      m_tb) / tau) + sum_{k != b} exp(sim(a_b, a_k) / tau)))`, with cosine
      `sim`.

    The regulariser is `tsr_weight * L_tsr + csa_weight * L_csa`, added to
    the balanced task losses and trained end to end (its gradient runs
    through the saliencies: double backpropagation). Use it with
    `MultiTaskModel.compile(..., gradient_mode="features", features=...,
    saliency_regularizer=keras_mtl.losses.RepMTL())` and any aggregator;
    the logs gain `rep_mtl_tsr` and `rep_mtl_csa`.

    Defaults and choices: the paper grid-searches both weights over
    {0.7, ..., 1.5} and fixes the other at 0.9 in its sensitivity study, so
    both default to 0.9. It publishes no code and no temperature, nor
    whether CSA's positive pair also enters the denominator or how it sums
    over tasks: keras_mtl uses the InfoNCE form above (positive in the
    denominator, mean over tasks) and `temperature=0.5`. CSA compares `B T`
    matrices of `C x C` floats in the formula, but computes with smaller
    factors (see `alignment`). Its normalised views change abruptly where
    a sample's saliency for a task nears zero (its gradient grows like the
    inverse of that saliency's norm).

    Args:
        tsr_weight: weight of the entropy term. Defaults to 0.9.
        csa_weight: weight of the alignment term. Defaults to 0.9; the
            alignment needs a batch of at least 2 samples.
        temperature: CSA's temperature `tau`. Defaults to 0.5.

    Example:

    >>> saliency = np.random.normal(size=(3, 4, 8)).astype("float32")
    >>> total, tsr, csa = keras_mtl.losses.RepMTL()(saliency)
    >>> float(tsr) <= np.log(3) + 1e-6
    True
    """

    def __init__(self, tsr_weight=0.9, csa_weight=0.9, temperature=0.5):
        self.tsr_weight = check_finite("tsr_weight", tsr_weight,
                                       inclusive=True)
        self.csa_weight = check_finite("csa_weight", csa_weight,
                                       inclusive=True)
        self.temperature = check_finite("temperature", temperature)

    def __call__(self, saliency):
        """`(total, tsr, csa)` of a `(T, B, ..., C)` saliency tensor."""
        saliency = ops.convert_to_tensor(saliency)
        if len(saliency.shape) < 3:
            raise ValueError(
                "RepMTL takes the saliency `(T, B, ..., C)`: one gradient of "
                "the shared features per task. Received: shape "
                f"{tuple(saliency.shape)}")
        num_tasks, batch = saliency.shape[0], saliency.shape[1]
        channels = saliency.shape[-1]
        s = ops.reshape(ops.cast(saliency, "float32"),
                        (num_tasks, batch, -1, channels))
        tsr = self.entropy(s)
        csa = self.alignment(s) if batch is None or batch > 1 else (
            ops.zeros((), "float32"))
        return self.tsr_weight * tsr + self.csa_weight * csa, tsr, csa

    @staticmethod
    def entropy(s):
        """TSR of the `(T, B, N, C)` saliency."""
        magnitude = ops.abs(ops.mean(s, axis=-1))                # (T, B, N)
        p = magnitude / (ops.sum(magnitude, axis=0) + EPSILON)
        return ops.mean(-ops.sum(p * ops.log(p + EPSILON), axis=0))

    def alignment(self, s):
        """CSA of the `(T, B, N, C)` saliency.

        The `C x C` matrices are never formed: their inner products are
        those of smaller factors, `<A A^T, S^T S> = |S A|^2`,
        `<A_b A_b^T, A_k A_k^T> = |A_b^T A_k|^2` and `|S^T S| = |S S^T|`
        (Frobenius), which costs `O(B T N C + B^2 T^2 C)`.
        """
        num_positions, channels = s.shape[2], s.shape[3]
        anchors = ops.mean(s, axis=2)                            # (T, B, C)
        cross = ops.einsum("tbc,ukc->bktu", anchors, anchors)    # A_b^T A_k
        anchor_dots = ops.sum(cross * cross, axis=(2, 3))        # (B, B)
        anchor_norms = ops.sqrt(ops.diagonal(anchor_dots))       # (B,)
        projected = ops.einsum("tbnc,ubc->tbnu", s, anchors)     # S_tb A_b
        view_dots = ops.sum(projected * projected, axis=(2, 3))  # (T, B)
        if num_positions is not None and num_positions <= channels:
            gram = ops.einsum("tbnc,tbmc->tbnm", s, s)
        else:
            gram = ops.einsum("tbnc,tbnd->tbcd", s, s)
        view_norms = ops.sqrt(ops.sum(gram * gram, axis=(2, 3)))  # (T, B)
        batch = anchor_dots.shape[0]
        unit = anchor_norms + EPSILON
        positive = view_dots / (unit[None] * (view_norms + EPSILON))
        positive = positive / self.temperature
        others = anchor_dots / (unit[:, None] * unit[None, :])
        others = others / self.temperature
        # The other samples' anchors: the diagonal is left out.
        others = ops.where(ops.eye(batch, dtype="bool"), -1e9, others)
        negatives = ops.logsumexp(others, axis=-1)               # (B,)
        denominator = ops.logaddexp(positive, negatives[None])
        return ops.mean(denominator - positive)

    def get_config(self):
        return {"tsr_weight": self.tsr_weight, "csa_weight": self.csa_weight,
                "temperature": self.temperature}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def get(identifier):
    """A `RepMTL` from itself, `"rep_mtl"`, a config dict, or None."""
    if identifier is None or isinstance(identifier, RepMTL):
        return identifier
    if identifier == "rep_mtl":
        return RepMTL()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise ValueError(
        "`saliency_regularizer` must be None, 'rep_mtl' or a "
        "keras_mtl.losses.RepMTL. Received: saliency_regularizer="
        f"{identifier!r}")
