import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.mixture_of_experts import MixtureOfExperts
from keras_mtl.src.layers.validation import serialize_objects


@keras_mtl_export("keras_mtl.layers.MixtureOfAdapterExperts")
class MixtureOfAdapterExperts(MixtureOfExperts):
    """Sparse mixture of bottleneck-adapter experts (MoAE), as in S4D.

    A `MixtureOfExperts` whose experts are bottleneck adapters
    `E_e(u) = W_up,e GELU(W_down,e u + b_down,e) + b_up,e` of hidden width
    `round(hidden_ratio * d)` and output width `d` (the input width),
    routed per token by a noisy top-k router (Shazeer et al. 2017):
    `MoAE(u) = sum_{e in top-k} softmax_top-k(h(u))_e E_e(u)`,
    `h(u) = u W_r + N(0, 1) softplus(u W_n)` in training. It is meant to run
    **in parallel** with a transformer feed-forward block,
    `x <- x + Dropout(FFN(u) + MoAE(u))` with `u` the FFN input, which
    `keras_mtl.layers.add_adapter_experts` sets up in keras-hub encoders.
    The up-projections start at zero, so the block starts as the identity
    perturbation (the pre-trained network's outputs are unchanged).

    Defaults follow the S4D configuration: 8 experts, top-2, hidden
    `0.25 d`, capacity factor 1.0, auxiliary weight 1e-3. The auxiliary
    loss is the Switch balancing loss of `MixtureOfExperts` (S4D multiplies
    raw noisy logits instead of probabilities). The adapter weights are
    batched `(num_experts, ...)` variables of this layer.

    Args:
        num_experts: number of adapter experts. Defaults to `8`.
        top_k: experts per token. Defaults to `2`.
        hidden_ratio: adapter hidden width as a fraction of the input width.
            Defaults to `0.25`.
        activation: adapter activation. Defaults to `"gelu"`.
        router: `"noisy_top_k"` (default) or `"softmax"`.
        capacity_factor: expert capacity factor, or `None` for no dropping.
            Defaults to `1.0`.
        load_balancing_loss_weight: weight of the balancing loss. Defaults
            to `1e-3`.
        router_z_loss_weight: weight of the router z-loss. Defaults to `0.0`.
        use_bias: whether the adapters have biases. Defaults to `True`.
        kernel_initializer: initializer of the down-projections.
        up_initializer: initializer of the up-projections. Defaults to
            `"zeros"`.
        bias_initializer: initializer of the biases.
        router_initializer: initializer of the router kernel.
        kernel_regularizer: optional regulariser of the adapter kernels.
        bias_regularizer: optional regulariser of the adapter biases.
        seed: optional integer seed of the router noise.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: tensor `(..., d)`, the feed-forward block's input.
        training: whether to add router noise and auxiliary losses.

    Output shape:
        `(..., d)`.

    Example:

    >>> moae = keras_mtl.layers.MixtureOfAdapterExperts(num_experts=4)
    >>> y = moae(np.ones((2, 3, 8), "float32"))
    >>> tuple(y.shape), float(np.abs(keras.ops.convert_to_numpy(y)).max())
    ((2, 3, 8), 0.0)

    Reference:
        Chen et al., "Static for Dynamic: Towards a Deeper Understanding of
        Dynamic Facial Expressions Using Static Expression Data", IEEE
        Transactions on Affective Computing, 2025 (arXiv 2409.06154).
        Shazeer et al., "Outrageously Large Neural Networks: The
        Sparsely-Gated Mixture-of-Experts Layer", ICLR 2017.
    """

    def __init__(
        self,
        num_experts=8,
        top_k=2,
        hidden_ratio=0.25,
        activation="gelu",
        router="noisy_top_k",
        capacity_factor=1.0,
        load_balancing_loss_weight=1e-3,
        router_z_loss_weight=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        up_initializer="zeros",
        bias_initializer="zeros",
        router_initializer="glorot_uniform",
        kernel_regularizer=None,
        bias_regularizer=None,
        seed=None,
        **kwargs,
    ):
        if (
            isinstance(hidden_ratio, bool)
            or not isinstance(hidden_ratio, (int, float))
            or hidden_ratio <= 0
        ):
            raise ValueError(
                "`hidden_ratio` must be a positive number. Received: "
                f"hidden_ratio={hidden_ratio!r}"
            )
        super().__init__(
            num_experts,
            expert_units=1,  # replaced by `expert_output_units` at build
            top_k=top_k,
            router=router,
            capacity_factor=capacity_factor,
            load_balancing_loss_weight=load_balancing_loss_weight,
            router_z_loss_weight=router_z_loss_weight,
            activation=activation,
            output_activation=None,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            output_kernel_initializer=up_initializer,
            bias_initializer=bias_initializer,
            router_initializer=router_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            seed=seed,
            **kwargs,
        )
        self.hidden_ratio = float(hidden_ratio)
        self.up_initializer = keras.initializers.get(up_initializer)

    def expert_output_units(self, input_dim):
        hidden = max(1, int(round(self.hidden_ratio * input_dim)))
        return (hidden, input_dim)

    def get_config(self):
        return {
            **self._base_config(),
            "hidden_ratio": self.hidden_ratio,
            **serialize_objects(self, "up_initializer"),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
