import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.validation import split_shapes
from keras_mtl.src.losses.esmm_loss import ctcvr_log_probabilities

OUTPUT_MODES = ("probabilities", "logits")


@keras_mtl_export("keras_mtl.layers.ESMMHead")
class ESMMHead(keras.layers.Layer):
    """Entire-space multi-task head: pCTR, pCVR and pCTCVR = pCTR * pCVR.

    ESMM (Ma et al., 2018) factorises the probability that an impression is
    clicked *and* converted as
    `p(y=1, z=1 | x) = p(y=1 | x) * p(z=1 | y=1, x)`, i.e.
    `pCTCVR = pCTR * pCVR`, and trains the CTR and CTCVR outputs on **every
    impression**; pCVR has no loss of its own. This removes the sample
    selection bias of a CVR model trained on clicked impressions only, which
    is then applied to all impressions.

    The layer takes the outputs of the CTR and CVR towers, `a` and `b`
    (logits by default), and returns a dict with keys `"ctr"`, `"cvr"` and
    `"ctcvr"`:

    - `output_mode="probabilities"`: `s(a)`, `s(b)` and `s(a) s(b)`, with
      `s` the sigmoid (for serving and metrics);
    - `output_mode="logits"`: `a`, `b` and the logit of `s(a) s(b)`,
      `log p - log(1 - p)` with `log p = log_sigmoid(a) + log_sigmoid(b)` and
      `log(1 - p) = logaddexp(log_sigmoid(-a), log_sigmoid(a) +
      log_sigmoid(-b))`. Both terms are computed without cancellation, so
      `keras.losses.BinaryCrossentropy(from_logits=True)` on this logit is
      the log-space CTCVR cross-entropy: finite and accurate even where the
      product of two probabilities underflows. Use this mode for training.

    In `keras_mtl.MultiTaskModel` every output is a task with a loss, so
    train on two tasks, `"ctr"` and `"ctcvr"` (labels: click and
    click-and-convert, over all impressions), and read pCVR from a second
    model on the same tensors, `keras.Model(inputs, outputs["cvr"])`, which
    shares the weights. For the `"ctr"` task pass the CTR tower's logit
    itself (equal to `outputs["ctr"]` in `"logits"` mode): Keras tracks
    dependencies per layer call, so `outputs["ctr"]` would appear to depend
    on the CVR tower too. The CTR tower then feeds both tasks and its
    variables are the shared ones whose two task gradients an aggregator
    combines; the CVR tower is trained by the CTCVR loss alone.

    Args:
        from_logits: whether the inputs are logits (`True`) or
            probabilities in [0, 1] (`False`; they are clipped to
            `[epsilon, 1 - epsilon]` before the logit is taken in
            `output_mode="logits"`). Defaults to `True`.
        output_mode: `"probabilities"` or `"logits"`. Defaults to
            `"probabilities"`.
        epsilon: clipping margin for probability inputs. Defaults to 1e-7.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: a list `[ctr, cvr]` of two tensors of the same shape,
            typically `(batch_size, 1)`.

    Output shape:
        dict `{"ctr", "cvr", "ctcvr"}` of tensors with the inputs' shape.

    Example:

    >>> x = keras.Input((4,))
    >>> ctr_logit = keras.layers.Dense(1)(keras.layers.Dense(8)(x))
    >>> cvr_logit = keras.layers.Dense(1)(keras.layers.Dense(8)(x))
    >>> out = keras_mtl.layers.ESMMHead(output_mode="logits")(
    ...     [ctr_logit, cvr_logit])
    >>> model = keras_mtl.MultiTaskModel(
    ...     x, {"ctr": ctr_logit, "ctcvr": out["ctcvr"]})
    >>> bce = keras.losses.BinaryCrossentropy(from_logits=True)
    >>> model.compile("adam", loss={"ctr": bce, "ctcvr": bce})
    >>> click = np.array([[1.0], [0.0], [1.0], [0.0]])
    >>> buy = np.array([[1.0], [0.0], [0.0], [0.0]])
    >>> history = model.fit(np.ones((4, 4)), {"ctr": click, "ctcvr": buy},
    ...                     epochs=1, verbose=0)
    >>> pcvr = keras.ops.sigmoid(keras.Model(x, out["cvr"])(np.ones((2, 4))))

    Reference:
        Ma et al., "Entire Space Multi-Task Model: An Effective Approach for
        Estimating Post-Click Conversion Rate", SIGIR 2018.
    """

    def __init__(
        self,
        from_logits=True,
        output_mode="probabilities",
        epsilon=1e-7,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(from_logits, bool):
            raise ValueError(
                f"`from_logits` must be a bool. Received: "
                f"from_logits={from_logits!r}"
            )
        if output_mode not in OUTPUT_MODES:
            raise ValueError(
                f"`output_mode` must be one of {OUTPUT_MODES}. Received: "
                f"output_mode={output_mode!r}"
            )
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, (int, float))
            or not 0.0 < epsilon < 0.5
        ):
            raise ValueError(
                "`epsilon` must be a number in (0, 0.5). Received: "
                f"epsilon={epsilon!r}"
            )
        self.from_logits = from_logits
        self.output_mode = output_mode
        self.epsilon = float(epsilon)

    def _check_inputs(self, shapes):
        split = split_shapes(shapes, 2)
        if split is None:
            raise ValueError(
                "ESMMHead expects a list of two tensors [ctr, cvr]. "
                f"Received: inputs with shapes {shapes!r}"
            )
        ctr, cvr = split
        if len(ctr) != len(cvr) or any(
            a is not None and b is not None and a != b
            for a, b in zip(ctr, cvr)
        ):
            raise ValueError(
                "ESMMHead expects the CTR and CVR inputs to have the same "
                f"shape. Received: ctr.shape={ctr}, cvr.shape={cvr}"
            )
        return ctr

    def build(self, input_shape):
        self._check_inputs(input_shape)

    def _logit(self, p):
        p = ops.clip(p, self.epsilon, 1.0 - self.epsilon)
        return ops.log(p) - ops.log1p(-p)

    def call(self, inputs):
        ctr, cvr = inputs
        if not self.from_logits and self.output_mode == "probabilities":
            return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}
        if not self.from_logits:
            ctr, cvr = self._logit(ctr), self._logit(cvr)
        log_p, log_not_p = ctcvr_log_probabilities(ctr, cvr)
        if self.output_mode == "logits":
            return {"ctr": ctr, "cvr": cvr, "ctcvr": log_p - log_not_p}
        return {
            "ctr": ops.sigmoid(ctr),
            "cvr": ops.sigmoid(cvr),
            "ctcvr": ops.exp(log_p),
        }

    def compute_output_shape(self, input_shape):
        shape = self._check_inputs(input_shape)
        return {"ctr": shape, "cvr": shape, "ctcvr": shape}

    def get_config(self):
        return {
            **super().get_config(),
            "from_logits": self.from_logits,
            "output_mode": self.output_mode,
            "epsilon": self.epsilon,
        }
