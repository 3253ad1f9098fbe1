"""A subclassed keras-hub text model with two heads, trained with several
aggregators through `keras_mtl.MultiTaskTrainer`.

A tiny `keras_hub.models.BertBackbone` (2 layers, hidden size 32, vocabulary
of 100, sequences of 16 tokens) is built with random weights (nothing is
downloaded) and wrapped in a subclassed `keras.Model` with a "topic" head
(4 classes) and a "sentiment" head (2 classes) on the backbone's pooled
output. The model subclasses `keras_mtl.MultiTaskTrainer` first, so
`compile(loss={task: loss}, aggregator=...)` and `fit` train it with one loss
per task; `fit` finds the shared variables from the first batch (every
trainable variable of the backbone, since both heads read the pooled output)
and the aggregator combines the two tasks' gradients of those variables.

The data are synthetic token sequences (inputs `token_ids`, `segment_ids`
and `padding_mask`, as the backbone expects): filler tokens plus a few
keyword tokens, where the topic keywords give the topic and the sentiment
keywords give the sentiment, so both labels are learnable from the tokens.
Every aggregator starts from the same initial weights. Run with any backend:

    KERAS_BACKEND=jax python examples/keras_hub_subclassed.py
    KERAS_BACKEND=torch python examples/keras_hub_subclassed.py \\
        --aggregators sum cagrad --epochs 3

`--gradient-mode gramian` trains the Gramian rules (UPGrad, MGDA, PCGrad,
CAGrad, ...) without holding every task's gradient of the backbone at once
(`compile(gradient_mode="gramian")`), with the same steps.
"""

import argparse

import keras
import keras_hub
import numpy as np

import keras_mtl

TASKS = {"topic": 4, "sentiment": 2}
VOCABULARY_SIZE = 100
SEQUENCE_LENGTH = 16
PAD, CLS, SEP = 0, 1, 2
TOPIC_WORDS = 10  # Topic k: token ids 10 + 5k ... 14 + 5k.
SENTIMENT_WORDS = 30  # Sentiment s: token ids 30 + 5s ... 34 + 5s.
FILLER_WORDS = (40, VOCABULARY_SIZE)


def make_data(num_samples, seed=0):
    """Synthetic token sequences and their `{"topic", "sentiment"}` labels.

    Each sequence is `[CLS] ... [SEP]` followed by padding; its body is
    filler tokens with two keywords of its topic and one or two keywords of
    its sentiment at random positions.
    """
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, TASKS["topic"], size=num_samples)
    sentiment = rng.integers(0, TASKS["sentiment"], size=num_samples)
    token_ids = np.full((num_samples, SEQUENCE_LENGTH), PAD, dtype="int32")
    lengths = rng.integers(8, SEQUENCE_LENGTH + 1, size=num_samples)
    for i, length in enumerate(lengths):
        body = rng.integers(*FILLER_WORDS, size=length - 2)
        keywords = list(TOPIC_WORDS + 5 * topic[i] + rng.integers(0, 5, 2))
        keywords += list(SENTIMENT_WORDS + 5 * sentiment[i]
                         + rng.integers(0, 5, rng.integers(1, 3)))
        positions = rng.choice(length - 2, size=len(keywords), replace=False)
        body[positions] = keywords
        token_ids[i, :length] = [CLS, *body, SEP]
    x = {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": token_ids != PAD,
    }
    y = {"topic": topic.astype("int32"),
         "sentiment": sentiment.astype("int32")}
    return x, y


def build_backbone():
    """A tiny BERT with random weights."""
    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY_SIZE, num_layers=2, num_heads=2,
        hidden_dim=32, intermediate_dim=64,
        max_sequence_length=SEQUENCE_LENGTH, dropout=0.0,
    )


class TextMultiTaskClassifier(keras_mtl.MultiTaskTrainer, keras.Model):
    """A keras-hub backbone with one classification head per task on its
    pooled (first-token) output; `call` returns `{task: logits}`."""

    def __init__(self, backbone, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_classes = dict(num_classes)
        self.heads = {
            task: keras.layers.Dense(n, name=f"{task}_head")
            for task, n in self.num_classes.items()
        }

    def call(self, inputs, training=False):
        pooled = self.backbone(inputs, training=training)["pooled_output"]
        return {task: head(pooled) for task, head in self.heads.items()}


def build_model(seed=0):
    """The classifier, with the same initial weights for a given seed."""
    keras.utils.set_random_seed(seed)
    return TextMultiTaskClassifier(build_backbone(), TASKS,
                                   name="text_multitask")


def train(aggregator, train_data, test_data, epochs, batch_size,
          learning_rate, seed=0, gradient_mode="parameters"):
    model = build_model(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={task: keras.losses.SparseCategoricalCrossentropy(
            from_logits=True) for task in TASKS},
        metrics={task: [keras.metrics.SparseCategoricalAccuracy(
            name="accuracy")] for task in TASKS},
        aggregator=aggregator,
        gradient_mode=gradient_mode,
    )
    history = model.fit(*train_data, batch_size=batch_size, epochs=epochs,
                        shuffle=True, verbose=0)
    results = model.evaluate(*test_data, batch_size=256, verbose=0,
                             return_dict=True)
    return model, history.history, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32,
                        help="training steps (batches) per epoch")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-test", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--aggregators", nargs="+",
                        default=["sum", "upgrad", "mgda", "pcgrad"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-mode", default="parameters",
                        choices=["parameters", "gramian"])
    args = parser.parse_args(argv)

    num_train = args.steps * args.batch_size
    train_data = make_data(num_train, seed=args.seed)
    test_data = make_data(args.num_test, seed=args.seed + 1)
    print(f"Backend: {keras.config.backend()}; {num_train} training and "
          f"{args.num_test} test sequences, {args.epochs} epochs of "
          f"{args.steps} steps")

    runs = {}
    for aggregator in args.aggregators:
        model, history, results = train(
            aggregator, train_data, test_data, args.epochs, args.batch_size,
            args.learning_rate, seed=args.seed,
            gradient_mode=args.gradient_mode)
        backbone = model.backbone.trainable_weights
        print(f"\n{aggregator}: {len(model.shared_variables)} shared "
              f"variables found (the backbone has {len(backbone)} trainable "
              "variables); training loss by epoch: "
              + " ".join(f"{v:.3f}" for v in history["loss"]))
        for task in TASKS:
            print(f"  {task:<9} test loss={results[f'{task}_loss']:.4f} "
                  f"accuracy={results[f'{task}_accuracy']:.3f}")
        runs[aggregator] = {"model": model, "history": history,
                            "results": results}

    header = f"{'aggregator':<11}" + "".join(
        f"{task + ' acc':>15}" for task in TASKS)
    print(f"\n{header}\n{'-' * len(header)}")
    for aggregator, run in runs.items():
        print(f"{aggregator:<11}" + "".join(
            f"{run['results'][f'{task}_accuracy']:>15.3f}" for task in TASKS))
    return runs


if __name__ == "__main__":
    main()
