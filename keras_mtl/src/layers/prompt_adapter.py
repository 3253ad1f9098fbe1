"""`PromptAdapter`: soft prompt tokens (prompt tuning)."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation


@keras_mtl_export("keras_mtl.layers.PromptAdapter")
class PromptAdapter(keras.layers.Layer):
    """`l` learned prompt vectors placed before a sequence (Lester et al.).

    Prompt tuning learns `P` (`l x d`) and runs the frozen model on
    `[P; X]`, `X` the embedded input. This layer holds `P` and returns it
    repeated over the batch, `(batch, l, d)`.
    `keras_mtl.transfer.add_adapters(..., config="prompt_tuning")` feeds it
    to the first transformer block; the prompt positions then go through
    every block, attended to by the input positions, and are dropped after
    the last. The blocks after the first hold adapters with `start=False`,
    which have no weights: they mark where the prompt positions continue.
    Weights: `l d`. The output changes at initialisation.

    Args:
        prompt_length: `l`. Defaults to `10` (`adapters`'
            `PromptTuningConfig`).
        start: whether this adapter holds the prompt (`True`) or only
            continues it in a later block (`False`, no weights). Defaults
            to `True`.
        initializer: initializer of `P`. Defaults to `None`, i.e.
            `RandomUniform(-0.5, 0.5)` (Lester et al.; `adapters`'
            `"random_uniform"`).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: the sequence, `(batch, seq, d)`; only its batch size and
            dtype are used.

    Output shape:
        `(batch, l, d)`.

    Example:

    >>> prompt = keras_mtl.layers.PromptAdapter(prompt_length=4)
    >>> tuple(prompt(np.ones((2, 7, 8), "float32")).shape)
    (2, 4, 8)

    Reference:
        Lester et al., "The Power of Scale for Parameter-Efficient Prompt
        Tuning", EMNLP 2021.
    """

    def __init__(self, prompt_length=10, start=True, initializer=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.prompt_length = validation.check_positive_int(
            "prompt_length", prompt_length)
        self.start = validation.check_bool("start", start)
        self.initializer = validation.get_initializer(
            "initializer",
            keras.initializers.RandomUniform(-0.5, 0.5)
            if initializer is None else initializer)

    def build(self, input_shape):
        d = validation.last_dim("inputs", input_shape)
        if self.start:
            self.prompt = self.add_weight(
                shape=(self.prompt_length, d), name="prompt",
                initializer=self.initializer)

    def call(self, inputs):
        if not self.start:
            raise ValueError(
                "A `PromptAdapter` with `start=False` holds no prompt; it "
                "continues the prompt of the first block.")
        prompt = ops.cast(self.prompt, inputs.dtype)
        batch = ops.shape(inputs)[0]
        return ops.broadcast_to(prompt[None],
                                (batch,) + tuple(prompt.shape))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.prompt_length, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "prompt_length": self.prompt_length,
                "start": self.start,
                **validation.serialize_objects(self, "initializer")}
