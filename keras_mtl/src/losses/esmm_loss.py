import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export


def ctcvr_log_probabilities(ctr_logits, cvr_logits):
    """`(log p, log(1 - p))` of `p = sigmoid(a) * sigmoid(b)`, computed stably.

    `log p = log_sigmoid(a) + log_sigmoid(b)`, and, since
    `1 - s(a) s(b) = s(-a) + s(a) s(-b)`,
    `log(1 - p) = logaddexp(log_sigmoid(-a), log_sigmoid(a) + log_sigmoid(-b))`.
    Neither term subtracts two nearly equal numbers, so both stay finite
    (and accurate) for any finite logits, including when `p` is within
    float precision of 0 or 1.
    """
    log_ctr = ops.log_sigmoid(ctr_logits)
    log_p = log_ctr + ops.log_sigmoid(cvr_logits)
    log_not_p = ops.logaddexp(
        ops.log_sigmoid(-ctr_logits), log_ctr + ops.log_sigmoid(-cvr_logits)
    )
    return log_p, log_not_p


@keras_mtl_export("keras_mtl.losses.ESMMLoss")
class ESMMLoss(keras.losses.Loss):
    """The ESMM loss over the entire impression space, from tower logits.

    With `a` the CTR logit and `b` the CVR logit of an impression, ESMM
    models `pCTR = s(a)`, `pCVR = s(b)` and `pCTCVR = pCTR * pCVR` (`s` the
    sigmoid). With click label `y` and conversion label `z`, the per-sample
    loss is

    `ctr_weight * BCE(y, pCTR) + BCE(y * z, pCTCVR)`,

    both terms over every impression, clicked or not; pCVR gets no direct
    loss. Both cross-entropies are computed in log space:
    `log pCTCVR = log_sigmoid(a) + log_sigmoid(b)` and
    `log(1 - pCTCVR) = logaddexp(log_sigmoid(-a),
    log_sigmoid(a) + log_sigmoid(-b))`, so the loss stays finite where the
    product of two probabilities would underflow to 0 or round to 1.

    The conversion label of an impression that was not clicked is ignored
    (it may be 0 or NaN). Use this loss for a single-output model whose
    output stacks the two logits; inside `keras_mtl.MultiTaskModel` use
    `keras_mtl.layers.ESMMHead(output_mode="logits")` instead, whose
    `"ctcvr"` output is the (stably computed) CTCVR logit, with
    `keras.losses.BinaryCrossentropy(from_logits=True)` for both tasks.

    Args:
        ctr_weight: non-negative weight of the CTR term. Defaults to 1.0.
        reduction: as for `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"`.
        name: name of the loss. Defaults to `"esmm_loss"`.
        dtype: dtype of the loss computation, as for `keras.losses.Loss`.
            Defaults to `None` (`keras.config.floatx()`).

    Call arguments:
        y_true: `(..., 2)` labels: `[click, conversion]`.
        y_pred: `(..., 2)` logits: `[ctr_logit, cvr_logit]`.

    Example:

    >>> loss = keras_mtl.losses.ESMMLoss()
    >>> y_true = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    >>> logits = np.array([[2.0, 1.0], [0.5, -1.0], [-60.0, -60.0]])
    >>> value = float(loss(y_true, logits))

    Reference:
        Ma et al., "Entire Space Multi-Task Model: An Effective Approach for
        Estimating Post-Click Conversion Rate", SIGIR 2018.
    """

    def __init__(
        self,
        ctr_weight=1.0,
        reduction="sum_over_batch_size",
        name="esmm_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if (
            isinstance(ctr_weight, bool)
            or not isinstance(ctr_weight, (int, float))
            or not ctr_weight >= 0
        ):
            raise ValueError(
                "`ctr_weight` must be a non-negative number. "
                f"Received: ctr_weight={ctr_weight!r}"
            )
        self.ctr_weight = float(ctr_weight)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        if y_pred.shape[-1] != 2:
            raise ValueError(
                "ESMMLoss expects predictions whose last axis holds the two "
                "logits [ctr_logit, cvr_logit]. Received: y_pred.shape="
                f"{tuple(y_pred.shape)}"
            )
        y_true = ops.cast(y_true, y_pred.dtype)
        if y_true.shape[-1] != 2:
            raise ValueError(
                "ESMMLoss expects labels whose last axis holds "
                "[click, conversion]. Received: y_true.shape="
                f"{tuple(y_true.shape)}"
            )
        click = y_true[..., 0]
        conversion = y_true[..., 1]
        clicked = click > 0.5
        ctcvr = ops.where(
            clicked, ops.where(ops.isnan(conversion), 0.0, conversion), 0.0
        )
        ctr_logits = y_pred[..., 0]
        cvr_logits = y_pred[..., 1]
        ctr_loss = -(
            click * ops.log_sigmoid(ctr_logits)
            + (1.0 - click) * ops.log_sigmoid(-ctr_logits)
        )
        log_p, log_not_p = ctcvr_log_probabilities(ctr_logits, cvr_logits)
        ctcvr_loss = -(ctcvr * log_p + (1.0 - ctcvr) * log_not_p)
        return self.ctr_weight * ctr_loss + ctcvr_loss

    def get_config(self):
        return {**super().get_config(), "ctr_weight": self.ctr_weight}
