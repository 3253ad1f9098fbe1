import math

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.expert_stack import ExpertStack
from keras_mtl.src.layers.expert_stack import normalize_units
from keras_mtl.src.layers.validation import check_choice
from keras_mtl.src.layers.validation import check_non_negative
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import check_positive_number
from keras_mtl.src.layers.validation import serialize_objects

ROUTERS = ("softmax", "noisy_top_k")
DISPATCHES = ("dense", "capacity")


@keras_mtl_export("keras_mtl.layers.MixtureOfExperts")
class MixtureOfExperts(keras.layers.Layer):
    """Mixture of experts with dense softmax or sparse top-k routing.

    A linear router gives logits `h(x) = x W_r` over `E = num_experts`
    experts for every token `x` (each row of a `(batch, features)` input,
    or each position of a `(batch, tokens, features)` input). The output is
    `y = sum_e G(x)_e f_e(x)`, with

    - `top_k=None`: `G(x) = softmax(h(x))` (dense gating);
    - `top_k=k`: `G(x) = softmax(KeepTopK(h(x), k))`, i.e. the softmax
      restricted to the `k` largest logits, the others 0, so the `k` weights
      sum to one;
    - `router="noisy_top_k"`: in training the logits are
      `h(x) + N(0, 1) * softplus(x W_noise)` (Shazeer et al. 2017), with
      `W_noise` initialised to zero.

    **Capacity.** With `capacity_factor=c`, each expert accepts at most
    `C = ceil(c * N * k / E)` of the `N` tokens of the batch; all first
    choices are served before any second choice, and within a choice rank in
    token order. An overflowing assignment gets gate weight 0 (no
    renormalisation), so a token whose every choice overflows outputs zero;
    put the layer in a residual branch to pass it through unchanged. The
    dropping is a cumulative sum over a fixed-shape mask, so it traces
    under `jit` / `tf.function`.

    **Auxiliary losses**, added through `add_loss` in training:
    `load_balancing_loss_weight * E * sum_e f_e P_e` (Switch Transformer),
    with `f_e` the fraction of token choices routed to expert `e` (before
    capacity; with dense gating, the arg-max choice) and `P_e` the mean
    router probability of `e`; and
    `router_z_loss_weight * mean_x logsumexp(h(x))^2` (ST-MoE).

    **Computation.** With `dispatch="dense"` (default) every expert is
    evaluated on every token with one batched product per expert layer, and
    the gate (zero outside the chosen experts) combines them, as in
    keras-hub's Mixtral block; with a linear last layer the gate scales the
    experts' last hidden layer, so the last layers of all experts run as one
    dense product of width `E * hidden`. This is the fastest choice for the
    few small experts of multi-task models, but sparse routing saves no
    FLOPs: the cost is that of a dense block of the experts' total width.

    `dispatch="capacity"` (Switch / GShard) computes each expert only on its
    routed tokens: every kept assignment gets a slot in its expert's buffer
    of `C` rows (its rank above), the tokens are gathered into an
    `(E, C, features)` buffer, each expert runs on its `C` rows (one batched
    matrix product per layer), and each token gathers its `k` outputs back,
    weighted by its gates. The shapes are fixed by the batch size, so it
    traces under `jit` / `tf.function`; the expert FLOPs fall from `E N` to
    `E C = capacity_factor * k * N` token evaluations. Where nothing is
    dropped it equals dense dispatch. It needs `top_k` and
    `capacity_factor`.

    **Statistics.** `expert_load` (`(E,)`, the `f_e` above) and
    `dropped_fraction` (the fraction of token choices dropped for capacity)
    are non-trainable variables updated on each training call;
    `routing_statistics(x)` computes them, and the gates, for any batch.

    Args:
        num_experts: number of experts `E` (at least 1).
        expert_units: layer widths of each expert MLP (an int for a single
            layer); experts are held as batched weights. Give this or
            `expert`.
        expert: alternatively, any Keras layer mapping `(N, features)` to
            `(N, units)`; `num_experts` independent copies are made from its
            config (the instance itself is not used).
        top_k: `None` (default) for dense softmax gating, or the number of
            experts `k` per token (`1 <= k <= num_experts`).
        router: `"softmax"` (default) or `"noisy_top_k"` (needs `top_k`).
        capacity_factor: `None` (default, no dropping) or a positive factor
            `c` (needs `top_k`).
        dispatch: `"dense"` (default: every expert on every token) or
            `"capacity"` (each expert only on its routed tokens; needs
            `top_k` and `capacity_factor`).
        load_balancing_loss_weight: weight of the Switch balancing loss.
            Defaults to `0.01`.
        router_z_loss_weight: weight of the router z-loss. Defaults to `0.0`.
        activation: activation between expert layers. Defaults to `"relu"`.
        output_activation: activation after the last expert layer. Defaults
            to `None` (linear).
        use_bias: whether expert layers have biases. Defaults to `True`.
        kernel_initializer: initializer of the expert kernels.
        output_kernel_initializer: initializer of the last expert kernel;
            defaults to `kernel_initializer` (use `"zeros"` for an expert
            mixture that starts as the zero function).
        bias_initializer: initializer of the expert biases.
        router_initializer: initializer of the router kernel.
        kernel_regularizer: optional regulariser of the expert kernels.
        bias_regularizer: optional regulariser of the expert biases.
        seed: optional integer seed of the router noise.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: tensor of shape `(..., features)`.
        training: whether to add router noise and auxiliary losses and to
            update the statistics.

    Output shape:
        `(..., units)`, with `units` the expert output width.

    Example:

    >>> moe = keras_mtl.layers.MixtureOfExperts(
    ...     num_experts=4, expert_units=(8, 6), top_k=2, capacity_factor=1.5)
    >>> y = moe(np.ones((2, 3, 6), "float32"), training=True)
    >>> tuple(y.shape), len(moe.losses)
    ((2, 3, 6), 1)

    Reference:
        Shazeer et al., "Outrageously Large Neural Networks: The
        Sparsely-Gated Mixture-of-Experts Layer", ICLR 2017.
        Fedus et al., "Switch Transformers: Scaling to Trillion Parameter
        Models with Simple and Efficient Sparsity", JMLR 2022.
        Zoph et al., "ST-MoE: Designing Stable and Transferable Sparse Expert
        Models", arXiv 2202.08906, 2022.
    """

    def __init__(
        self,
        num_experts,
        expert_units=None,
        expert=None,
        top_k=None,
        router="softmax",
        capacity_factor=None,
        dispatch="dense",
        load_balancing_loss_weight=0.01,
        router_z_loss_weight=0.0,
        activation="relu",
        output_activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        bias_initializer="zeros",
        router_initializer="glorot_uniform",
        kernel_regularizer=None,
        bias_regularizer=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        if (expert_units is None) == (expert is None):
            raise ValueError(
                "Pass exactly one of `expert_units` and `expert`. Received: "
                f"expert_units={expert_units!r}, expert={expert!r}"
            )
        if expert_units is not None:
            expert_units = normalize_units(expert_units)
        if expert is not None and not isinstance(expert, keras.layers.Layer):
            raise ValueError(
                f"`expert` must be a Keras layer. Received: expert={expert!r}"
            )
        if top_k is not None:
            check_positive_int("top_k", top_k)
            if top_k > num_experts:
                raise ValueError(
                    "`top_k` must be at most `num_experts` "
                    f"({num_experts}). Received: top_k={top_k!r}"
                )
        check_choice("router", router, ROUTERS)
        if router == "noisy_top_k" and top_k is None:
            raise ValueError(
                "`router='noisy_top_k'` needs `top_k`. Received: "
                f"router={router!r} with top_k=None"
            )
        if capacity_factor is not None:
            if top_k is None:
                raise ValueError(
                    "`capacity_factor` needs sparse routing (`top_k`). "
                    f"Received: capacity_factor={capacity_factor!r} with "
                    "top_k=None"
                )
            capacity_factor = float(
                check_positive_number("capacity_factor", capacity_factor))
        check_choice("dispatch", dispatch, DISPATCHES)
        if dispatch == "capacity" and capacity_factor is None:
            raise ValueError(
                "`dispatch='capacity'` needs `top_k` and `capacity_factor` "
                "(the experts' buffer size). Received: "
                f"dispatch={dispatch!r} with top_k={top_k!r}, "
                "capacity_factor=None"
            )
        self.num_experts = num_experts
        self.expert_units = expert_units
        self.expert = expert
        self.top_k = top_k
        self.router = router
        self.capacity_factor = capacity_factor
        self.dispatch = dispatch
        self.load_balancing_loss_weight = check_non_negative(
            "load_balancing_loss_weight", load_balancing_loss_weight)
        self.router_z_loss_weight = check_non_negative(
            "router_z_loss_weight", router_z_loss_weight)
        self.activation = keras.activations.get(activation)
        self.output_activation = keras.activations.get(output_activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or kernel_initializer
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.router_initializer = keras.initializers.get(router_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self._linear_output = (
            keras.activations.serialize(self.output_activation) == "linear"
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.expert_layers = []
        if expert is not None:
            config = keras.saving.serialize_keras_object(expert)
            for e in range(num_experts):
                clone = keras.saving.deserialize_keras_object(config)
                clone.name = f"expert_{e}"
                self.expert_layers.append(clone)

    def expert_output_units(self, input_dim):
        """Layer widths of the batched experts for inputs of width
        `input_dim` (overridden by subclasses that size experts from the
        input)."""
        return self.expert_units

    def build(self, input_shape):
        d = input_shape[-1]
        if self.expert is None:
            self.experts = ExpertStack(
                self.num_experts,
                self.expert_output_units(d),
                activation=self.activation,
                output_activation=self.output_activation,
                use_bias=self.use_bias,
                kernel_initializer=self.kernel_initializer,
                output_kernel_initializer=self.output_kernel_initializer,
                bias_initializer=self.bias_initializer,
                kernel_regularizer=self.kernel_regularizer,
                bias_regularizer=self.bias_regularizer,
                dtype=self.dtype_policy,
                name="experts",
            )
            self.experts.build((None, d))
            self.units = self.experts.units[-1]
        else:
            for layer in self.expert_layers:
                layer.build((None, d))
            self.units = self.expert_layers[0].compute_output_shape(
                (None, d)
            )[-1]
        self.router_kernel = self.add_weight(
            name="router_kernel",
            shape=(d, self.num_experts),
            initializer=self.router_initializer,
            dtype="float32",
        )
        if self.router == "noisy_top_k":
            self.noise_kernel = self.add_weight(
                name="noise_kernel",
                shape=(d, self.num_experts),
                initializer="zeros",
                dtype="float32",
            )
        self.expert_load = self.add_weight(
            name="expert_load", shape=(self.num_experts,),
            initializer="zeros", trainable=False, dtype="float32",
        )
        self.dropped_fraction = self.add_weight(
            name="dropped_fraction", shape=(), initializer="zeros",
            trainable=False, dtype="float32",
        )

    def _route(self, tokens, training):
        """Routes `(N, d)` tokens; returns a dict with the `(N, E)` gates,
        router `logits` and `probs`, and the `(N, k, E)` masks of `chosen`
        and `kept` (after capacity) assignments."""
        x = ops.cast(tokens, "float32")
        logits = ops.matmul(x, self.router_kernel)
        if self.router == "noisy_top_k" and training:
            scale = ops.softplus(ops.matmul(x, self.noise_kernel))
            noise = keras.random.normal(
                ops.shape(logits), seed=self.seed_generator
            )
            logits = logits + noise * scale
        E = self.num_experts
        if self.top_k is None:
            probs = ops.softmax(logits, axis=-1)
            chosen = ops.one_hot(ops.argmax(probs, axis=-1), E)[:, None, :]
            return dict(gates=probs, logits=logits, probs=probs,
                        chosen=chosen, kept=chosen)
        # The softmax restricted to the top k is the softmax of their logits;
        # the full one is only needed for the balancing loss in training.
        top_logits, top_index = ops.top_k(logits, self.top_k)
        top_probs = ops.softmax(top_logits, axis=-1)
        chosen = ops.one_hot(top_index, E)  # (N, k, E)
        kept = chosen
        route = dict(logits=logits, chosen=chosen, top_index=top_index,
                     top_probs=top_probs)
        if training:
            route["probs"] = ops.softmax(logits, axis=-1)
        if self.capacity_factor is not None:
            rank, capacity = self._rank_in_expert(chosen)
            fits = ops.less(rank, ops.cast(capacity, rank.dtype))
            kept = chosen * ops.cast(fits, chosen.dtype)
            route.update(rank=rank, capacity=capacity)
        route.update(kept=kept,
                     gates=ops.sum(kept * top_probs[..., None], axis=1))
        return route

    def _rank_in_expert(self, chosen):
        """Each assignment's 0-based rank among its expert's assignments
        (`(N, k, E)`, every first choice before any second choice, then in
        token order) and the capacity `C` of every expert."""
        k, E = self.top_k, self.num_experts
        num_tokens = ops.shape(chosen)[0]
        if isinstance(num_tokens, int):
            capacity = math.ceil(self.capacity_factor * num_tokens * k / E)
        else:
            capacity = ops.cast(ops.ceil(
                self.capacity_factor * ops.cast(num_tokens, "float32") * k
                / E), "int32")
        by_slot = ops.reshape(ops.transpose(chosen, (1, 0, 2)), (-1, E))
        rank = ops.cumsum(by_slot, axis=0) - 1.0
        rank = ops.transpose(ops.reshape(rank, (k, -1, E)), (1, 0, 2))
        return rank, capacity

    def _dispatched_mix(self, tokens, route):
        """`sum_j w_j f_{e_j}(x)` with each expert run on its `C` routed
        tokens only (`dispatch="capacity"`)."""
        E, C = self.num_experts, route["capacity"]
        num_tokens = ops.shape(tokens)[0]
        slots = E * C
        kept = ops.sum(route["kept"], axis=-1)  # (N, k): 1 kept, 0 dropped
        rank = ops.sum(route["rank"] * route["chosen"], axis=-1)
        slot = route["top_index"] * C + ops.cast(rank, "int32")
        slot = ops.where(kept > 0.5, slot, slots)  # dropped: a spare slot
        # 1 + the token in each slot, 0 for an empty slot (a segment sum,
        # not `ops.scatter`, which loops over the indices on PyTorch).
        owner = ops.segment_sum(
            ops.reshape(ops.broadcast_to(
                ops.arange(1, num_tokens + 1, dtype="int32")[:, None],
                ops.shape(slot)), (-1,)),
            ops.reshape(slot, (-1,)),
            num_segments=slots + 1,
        )[:slots]
        padded = ops.concatenate(
            [ops.zeros_like(tokens[:1]), tokens], axis=0)
        buffers = ops.reshape(ops.take(padded, owner, axis=0), (E, C, -1))
        if self.expert is None:
            outputs = self.experts.per_expert(buffers)
        else:
            outputs = ops.stack([layer(buffers[e]) for e, layer
                                 in enumerate(self.expert_layers)])
        outputs = ops.reshape(outputs, (slots, self.units))
        outputs = ops.concatenate([outputs, ops.zeros_like(outputs[:1])], 0)
        picked = ops.take(outputs, slot, axis=0)  # (N, k, units)
        weights = ops.cast(route["top_probs"] * kept, picked.dtype)
        return ops.sum(picked * weights[..., None], axis=1)

    def _statistics(self, route):
        chosen, kept = route["chosen"], route["kept"]
        load = ops.mean(ops.sum(chosen, axis=1), axis=0) / ops.cast(
            ops.shape(chosen)[1], "float32"
        )
        dropped = 1.0 - ops.sum(kept) / ops.sum(chosen)
        return load, dropped

    def call(self, inputs, training=None):
        lead = ops.shape(inputs)[:-1]
        tokens = ops.reshape(inputs, (-1, ops.shape(inputs)[-1]))
        route = self._route(tokens, training)
        if self.dispatch == "capacity":
            mixed = self._dispatched_mix(tokens, route)
        elif self.expert is None and self._linear_output:
            mixed = self.experts.gated_sum(tokens, route["gates"])
        else:
            if self.expert is None:
                outputs = self.experts(tokens)  # (N, E, u)
            else:
                outputs = ops.stack(
                    [layer(tokens) for layer in self.expert_layers], axis=1
                )
            gates = ops.cast(route["gates"], outputs.dtype)
            mixed = ops.einsum("ne,neu->nu", gates, outputs)
        if training:
            load, dropped = self._statistics(route)
            self.expert_load.assign(load)
            self.dropped_fraction.assign(dropped)
            self._add_auxiliary_losses(route, load)
        return ops.reshape(mixed, tuple(lead) + (self.units,))

    def _add_auxiliary_losses(self, route, load):
        if self.load_balancing_loss_weight > 0:
            importance = ops.mean(route["probs"], axis=0)
            balance = self.num_experts * ops.sum(
                ops.stop_gradient(load) * importance
            )
            self.add_loss(self.load_balancing_loss_weight * balance)
        if self.router_z_loss_weight > 0:
            z = ops.logsumexp(route["logits"], axis=-1)
            self.add_loss(self.router_z_loss_weight * ops.mean(z**2))

    def routing_statistics(self, inputs):
        """Routing of a batch without noise or side effects.

        Returns a dict with `gates` (`(..., num_experts)`, the weights each
        token gives each expert after capacity dropping), `expert_load`
        (`(num_experts,)`, fraction of token choices per expert, before
        capacity) and `dropped_fraction` (fraction of choices dropped).
        """
        if not self.built:
            self.build(tuple(ops.shape(inputs)))
        lead = ops.shape(inputs)[:-1]
        tokens = ops.reshape(inputs, (-1, ops.shape(inputs)[-1]))
        route = self._route(tokens, training=False)
        load, dropped = self._statistics(route)
        gates = ops.reshape(route["gates"], tuple(lead) + (self.num_experts,))
        return {"gates": gates, "expert_load": load,
                "dropped_fraction": dropped}

    def compute_output_shape(self, input_shape):
        d = input_shape[-1]
        if self.expert is None:
            units = self.expert_output_units(d)[-1]
        else:
            units = self.expert.compute_output_shape((None, d))[-1]
        return tuple(input_shape[:-1]) + (units,)

    def _base_config(self):
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "router": self.router,
            "capacity_factor": self.capacity_factor,
            "dispatch": self.dispatch,
            "load_balancing_loss_weight": self.load_balancing_loss_weight,
            "router_z_loss_weight": self.router_z_loss_weight,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            **serialize_objects(
                self,
                "kernel_initializer",
                "bias_initializer",
                "router_initializer",
                "kernel_regularizer",
                "bias_regularizer",
            ),
            "seed": self.seed,
        }

    def get_config(self):
        return {
            **self._base_config(),
            "expert_units": (
                None if self.expert_units is None else list(self.expert_units)
            ),
            "expert": (
                None
                if self.expert is None
                else keras.saving.serialize_keras_object(self.expert)
            ),
            "output_activation": keras.activations.serialize(
                self.output_activation
            ),
            **serialize_objects(self, "output_kernel_initializer"),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("expert") is not None:
            config["expert"] = keras.saving.deserialize_keras_object(
                config["expert"]
            )
        return cls(**config)
