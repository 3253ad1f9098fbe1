"""Two-stage transfer on Census-Income: adapters, ScaLearn and AdapterFusion.

A small tabular transformer (`keras_hub.layers.TransformerEncoder` blocks over
one token per census column) is pre-trained once, then frozen; every task gets
a bottleneck adapter, and a low-resource target task learns to combine them.

- Data (`keras_mtl.datasets.census_income`, integer codes). Five binary
  tasks are derived from the loader's columns: the sources `income` (> 50K),
  `never_married`, `sex` (male) and `full_time` (`full_or_part_emp` is
  "Full-time schedules"); the target `college` (associate degree or higher,
  the task of the MMoE paper's group 2). The loader already removes
  `income_50k`, `education` and `marital_stat` from the inputs; `sex` and
  `full_or_part_emp` are removed here, so no task sees its own column. Rows
  are subsampled: a source pool from the training file, a small target
  training set (disjoint from it), a small target validation set and a test
  set from the two halves of the test file.
- Backbone. Each of the 36 remaining columns is one token: a per-column
  embedding of the category code (categorical columns) or value x a learned
  vector + a bias (numeric columns), plus a learned column embedding; then
  a LayerNorm and `num_layers` post-LN `TransformerEncoder`s; a task head is
  `Dense(1, sigmoid)` on the mean of the token outputs.
- Pre-training (cheap): by default, multi-task training of the backbone
  with one head per source task on the source pool (`pretrain_epochs`
  epochs); with `pretraining="masked_columns"`, self-supervised
  masked-column modelling instead: 30 % of the categorical tokens of each
  row are replaced by a per-column [MASK] code and predicted from the others
  (one softmax per column; numeric columns are never masked), over
  `pretrain_epochs` differently masked copies of the rows.
- Stage 1 (`keras_mtl.transfer.add_adapters`, Pfeiffer placement): the
  backbone is frozen and one adapter per task is trained with its own head,
  the source adapters on the source pool, the target's own adapter on the
  small target set (this row of the table is the "target adapter only"
  baseline). The target adapter is saved with `save_adapter` and reloaded
  with `load_adapter` into a fresh copy of the pre-trained backbone.
- Stage 2 (`keras_mtl.transfer.add_combiner`): on the small target set,
  ScaLearn, ScaLearnUniform, ScaLearn++, ScaLearnUniform++ and AdapterFusion
  learn to combine the N = 5 frozen adapters (the four sources and the
  target's own, as in both papers), each with a new head.
- Baselines: full fine-tuning of the pre-trained backbone, and the same
  network trained from scratch, both on the small target set.

Every target run trains for a fixed number of epochs and keeps the epoch
with the best validation AUC. The printed table gives, per method, the
trainable parameters of the transfer part (adapters / combiners, or the
whole backbone for fine-tuning) and of the head, the test AUC and accuracy,
and the training time. Run with any backend:

    KERAS_BACKEND=jax python examples/two_stage_transfer.py
"""

import argparse
import math
import os
import tempfile
import time

import keras
import keras_hub
import numpy as np
from keras import ops

import keras_mtl

transfer = keras_mtl.transfer

SOURCE_TASKS = ("income", "never_married", "sex", "full_time")
TARGET_TASK = "college"
# Tasks derived here from an input column, which is then removed from the
# tokens: task -> (column, positive value).
COLUMN_TASKS = {
    "sex": ("sex", "Male"),
    "full_time": ("full_or_part_emp", "Full-time schedules"),
}
# Stage-2 combiners of `keras_mtl.transfer.add_combiner`, with table labels.
COMBINERS = {
    "scalearn": "ScaLearn",
    "scalearn_uniform": "ScaLearnUniform",
    "scalearn_plus_plus": "ScaLearn++",
    "scalearn_uniform_plus_plus": "ScaLearnUniform++",
    "adapter_fusion": "AdapterFusion",
}
BASELINES = {
    "adapter": "Target adapter only",
    "fine_tuning": "Full fine-tuning",
    "scratch": "From scratch (no pre-training)",
}
MASK_RATE = 0.3


class ColumnTokens(keras.layers.Layer):
    """One token per tabular column, plus a learned column embedding.

    Categorical column `j` with `vocabulary_sizes[j]` training values has
    codes 0 (unseen), 1..V (values) and V + 1 ([MASK]), each with its own
    embedding; numeric column `k` becomes `value * w_k + b_k`. Tokens come
    numeric columns first, shape `(batch, num_numeric + num_categorical,
    hidden_dim)`.
    """

    def __init__(self, vocabulary_sizes, num_numeric, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_sizes = [int(v) for v in vocabulary_sizes]
        self.num_numeric = int(num_numeric)
        self.hidden_dim = int(hidden_dim)
        sizes = np.array(self.vocabulary_sizes) + 2
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(
            "int32"
        )
        self._num_codes = int(sizes.sum())

    def build(self, input_shape):
        d = self.hidden_dim
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.category_embeddings = self.add_weight(
            shape=(self._num_codes, d), initializer=init,
            name="category_embeddings",
        )
        self.numeric_kernel = self.add_weight(
            shape=(self.num_numeric, d), initializer=init,
            name="numeric_kernel",
        )
        self.numeric_bias = self.add_weight(
            shape=(self.num_numeric, d), initializer="zeros",
            name="numeric_bias",
        )
        self.column_embeddings = self.add_weight(
            shape=(self.num_numeric + len(self.vocabulary_sizes), d),
            initializer=init, name="column_embeddings",
        )

    def call(self, inputs):
        numeric = ops.cast(inputs["numeric"], self.compute_dtype)
        offsets = ops.convert_to_tensor(self._offsets)
        codes = ops.cast(inputs["categorical"], "int32") + offsets
        categorical = ops.take(self.category_embeddings, codes, axis=0)
        numeric = numeric[..., None] * self.numeric_kernel + self.numeric_bias
        tokens = ops.concatenate([numeric, categorical], axis=1)
        return tokens + self.column_embeddings

    def compute_output_shape(self, input_shape):
        batch = input_shape["numeric"][0]
        columns = self.num_numeric + len(self.vocabulary_sizes)
        return (batch, columns, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_sizes=self.vocabulary_sizes,
            num_numeric=self.num_numeric,
            hidden_dim=self.hidden_dim,
        )
        return config


class MaskedColumnHead(keras.layers.Layer):
    """Per-column softmax logits over each categorical column's codes.

    Input: the categorical tokens' outputs `(batch, num_categorical, d)`;
    output: logits `(batch, num_categorical, max_vocabulary + 1)`, with the
    codes a column does not have pushed to -1e9.
    """

    def __init__(self, vocabulary_sizes, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_sizes = [int(v) for v in vocabulary_sizes]
        classes = max(self.vocabulary_sizes) + 1
        valid = np.arange(classes)[None, :] <= np.array(
            self.vocabulary_sizes
        )[:, None]
        self._invalid = np.where(valid, 0.0, -1e9).astype("float32")

    def build(self, input_shape):
        columns, d = len(self.vocabulary_sizes), input_shape[-1]
        classes = self._invalid.shape[1]
        self.kernel = self.add_weight(
            shape=(columns, d, classes), initializer="glorot_uniform",
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(columns, classes), initializer="zeros", name="bias"
        )

    def call(self, tokens):
        logits = ops.einsum("bcd,cdv->bcv", tokens, self.kernel) + self.bias
        return logits + ops.cast(self._invalid, logits.dtype)


def build_backbone(vocabulary_sizes, num_numeric, hidden_dim=32,
                   num_layers=2, num_heads=2, intermediate_dim=None,
                   dropout=0.1, name="tabular_backbone"):
    """The tabular transformer: `{"sequence_output", "pooled_output"}`."""
    num_categorical = len(vocabulary_sizes)
    inputs = {
        "numeric": keras.Input((num_numeric,), name="numeric"),
        "categorical": keras.Input(
            (num_categorical,), dtype="int32", name="categorical"
        ),
    }
    x = ColumnTokens(
        vocabulary_sizes, num_numeric, hidden_dim, name="column_tokens"
    )(inputs)
    x = keras.layers.LayerNormalization(
        epsilon=1e-6, name="embeddings_layer_norm"
    )(x)
    x = keras.layers.Dropout(dropout, name="embeddings_dropout")(x)
    for i in range(num_layers):
        x = keras_hub.layers.TransformerEncoder(
            intermediate_dim=intermediate_dim or 2 * hidden_dim,
            num_heads=num_heads,
            dropout=dropout,
            activation="gelu",
            name=f"transformer_layer_{i}",
        )(x)
    pooled = keras.layers.GlobalAveragePooling1D(name="mean_pool")(x)
    return keras.Model(
        inputs, {"sequence_output": x, "pooled_output": pooled}, name=name
    )


def task_model(backbone, task, head=None):
    """`backbone` + a `Dense(1, sigmoid)` head on the pooled output."""
    inputs = {
        "numeric": keras.Input(backbone.input["numeric"].shape[1:],
                               name="numeric"),
        "categorical": keras.Input(backbone.input["categorical"].shape[1:],
                                   dtype="int32", name="categorical"),
    }
    if head is None:
        head = keras.layers.Dense(1, activation="sigmoid", name=f"{task}_head")
    outputs = head(backbone(inputs)["pooled_output"])
    return keras.Model(inputs, outputs, name=f"{task}_model")


# --- data -------------------------------------------------------------------


def _take(x, rows):
    return {key: value[rows] for key, value in x.items()}


def load_data(num_source, num_target, num_val, num_test, seed, path,
              cache_dir):
    """Subsampled features and the five labels; see the module docstring."""
    kwargs = dict(categorical="integer", seed=seed, path=path,
                  cache_dir=cache_dir, with_info=True)
    *splits_1, info = keras_mtl.datasets.census_income(group=1, **kwargs)
    *splits_2, _ = keras_mtl.datasets.census_income(group=2, **kwargs)
    columns = info["categorical_columns"]
    removed = [columns.index(column) for column, _ in COLUMN_TASKS.values()]
    kept = [j for j in range(len(columns)) if j not in removed]

    def prepare(split_1, split_2):
        (x, y1), (_, y2) = split_1, split_2
        labels = {"income": y1["income"],
                  "never_married": y1["never_married"],
                  "college": y2["college"]}
        for task, (column, positive) in COLUMN_TASKS.items():
            j = columns.index(column)
            vocabulary = info["vocabularies"][column]
            code = vocabulary.index(positive) + 1 if positive in vocabulary \
                else -1
            labels[task] = (x["categorical"][:, j] == code).astype(
                "float32")[:, None]
        features = {"numeric": x["numeric"],
                    "categorical": x["categorical"][:, kept]}
        return features, labels

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = [
        prepare(a, b) for a, b in zip(splits_1, splits_2)
    ]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_train["numeric"]))
    if num_source + num_target > order.size:
        raise ValueError(
            f"num_source + num_target = {num_source + num_target} exceeds "
            f"the {order.size} training rows."
        )
    source_rows = np.sort(order[:num_source])
    target_rows = np.sort(order[num_source:num_source + num_target])
    val_rows = np.sort(rng.permutation(len(x_val["numeric"]))[:num_val])
    test_rows = np.sort(rng.permutation(len(x_test["numeric"]))[:num_test])

    def subset(x, y, rows, tasks):
        return _take(x, rows), {t: y[t][rows] for t in tasks}

    vocabulary_sizes = [len(info["vocabularies"][columns[j]]) for j in kept]
    return {
        "source": subset(x_train, y_train, source_rows, SOURCE_TASKS),
        "target": subset(x_train, y_train, target_rows, (TARGET_TASK,)),
        "val": subset(x_val, y_val, val_rows, (TARGET_TASK,)),
        "test": subset(x_test, y_test, test_rows, (TARGET_TASK,)),
        "vocabulary_sizes": vocabulary_sizes,
        "num_numeric": x_train["numeric"].shape[1],
    }


def masked_copies(x, vocabulary_sizes, copies, rng):
    """`copies` masked versions of `x`: inputs, targets, and mask weights."""
    codes = np.tile(x["categorical"], (copies, 1))
    numeric = np.tile(x["numeric"], (copies, 1))
    masked = rng.uniform(size=codes.shape) < MASK_RATE
    mask_codes = np.array(vocabulary_sizes, "int32") + 1
    inputs = {"numeric": numeric,
              "categorical": np.where(masked, mask_codes, codes)}
    return inputs, codes, masked.astype("float32")


# --- training ---------------------------------------------------------------


def num_params(variables):
    return sum(math.prod(v.shape) for v in variables)


def pretrain_masked_columns(backbone, x, vocabulary_sizes, epochs,
                            batch_size, rng, run_eagerly=False):
    """Masked-column modelling on the rows of `x` (no task labels)."""
    num_numeric = backbone.input["numeric"].shape[1]
    inputs, targets, weights = masked_copies(x, vocabulary_sizes, epochs, rng)
    tokens = backbone.output["sequence_output"][:, num_numeric:]
    logits = MaskedColumnHead(vocabulary_sizes, name="mcm_head")(tokens)
    model = keras.Model(backbone.input, logits, name="masked_columns")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=run_eagerly,
    )
    history = model.fit(inputs, targets, sample_weight=weights,
                        batch_size=batch_size, epochs=1, verbose=0)
    return history.history["loss"][-1]


def pretrain_multitask(backbone, x, y, epochs, batch_size, run_eagerly=False):
    """Shared-backbone multi-task training on the source labels `y`."""
    pooled = backbone.output["pooled_output"]
    outputs = {
        task: keras.layers.Dense(1, activation="sigmoid", name=task)(pooled)
        for task in y
    }
    model = keras.Model(backbone.input, outputs, name="multitask")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={task: "binary_crossentropy" for task in y},
        run_eagerly=run_eagerly,
    )
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs,
                        verbose=0)
    return history.history["loss"][-1]


def fit(model, x, y, learning_rate, epochs, batch_size, validation=None,
        run_eagerly=False):
    """Adam on binary cross-entropy; keeps the best epoch on validation."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
        run_eagerly=run_eagerly,
    )
    callbacks = []
    if validation is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=epochs,
            restore_best_weights=True))
    model.fit(x, y, validation_data=validation, batch_size=batch_size,
              epochs=epochs, callbacks=callbacks, verbose=0)


def evaluate(model, x, y):
    predictions = model.predict(x, batch_size=2048, verbose=0)
    auc = keras.metrics.AUC(num_thresholds=2000)
    auc.update_state(y, predictions)
    accuracy = float(np.mean((predictions > 0.5) == (y > 0.5)))
    return float(auc.result()), accuracy, predictions


def format_table(rows):
    header = (f"{'Method':<31} | {'transfer params':>15} | {'head':>4} | "
              f"{'test AUC':>8} | {'test acc':>8} | {'time (s)':>8}")
    lines = [header, "-" * len(header)]
    for label, r in rows:
        lines.append(
            f"{label:<31} | {r['transfer_params']:>15,} | "
            f"{r['head_params']:>4} | {r['auc']:>8.4f} | "
            f"{r['accuracy']:>8.4f} | {r['seconds']:>8.1f}"
        )
    return "\n".join(lines)


def main(num_source=12000, num_target=1500, num_val=1000, num_test=10000,
         hidden_dim=32, num_layers=2, num_heads=2, reduction_factor=4,
         pretraining="multitask", pretrain_epochs=3, source_epochs=2,
         target_epochs=20, batch_size=128, combiners=tuple(COMBINERS),
         baselines=tuple(BASELINES), seed=0,
         path=None, cache_dir=None, run_eagerly=False):
    """Runs the two-stage transfer study and prints the results table.

    Args:
        num_source: training rows of the source pool (pre-training and the
            source adapters).
        num_target: training rows of the low-resource target task.
        num_val, num_test: target validation rows (from the validation half
            of the test file) and test rows (from the test half).
        hidden_dim, num_layers, num_heads: backbone size.
        reduction_factor: adapter bottleneck is `hidden_dim //
            reduction_factor`.
        pretraining: `"multitask"` (default: the backbone is trained with
            one head per source task on the source pool) or
            `"masked_columns"` (self-supervised masked-column modelling on
            the same rows, no labels).
        pretrain_epochs: epochs of pre-training (for `"masked_columns"`,
            differently masked copies of the source pool).
        source_epochs, target_epochs: epochs of the source adapters and of
            every target run.
        batch_size: batch size of every run.
        combiners: stage-2 combiners, among the keys of `COMBINERS`.
        baselines: among `"adapter"` (required by the combiners: it trains
            the target's own adapter), `"fine_tuning"` and `"scratch"`.
        seed: seed of the subsampling, masking and initialisations.
        path, cache_dir: passed to `keras_mtl.datasets.census_income`.
        run_eagerly: compile every model with `run_eagerly` (no graph
            compilation: faster for tiny runs such as the tests).

    Returns:
        A dict: `"results"`, `{method: {"transfer_params", "head_params",
        "auc", "accuracy", "seconds"}}` (methods are the keys of
        `BASELINES` and `COMBINERS`); `"sizes"`, `{"N", "d", "L"}`;
        `"adapter_file_bytes"`; `"reload_max_difference"`;
        `"source_auc"`, `{task: training AUC of its source adapter}`.
    """
    if pretraining not in ("multitask", "masked_columns"):
        raise ValueError(f"Unknown pretraining={pretraining!r}.")
    unknown = [c for c in combiners if c not in COMBINERS]
    unknown += [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}.")
    if combiners and "adapter" not in baselines:
        raise ValueError("The combiners need the 'adapter' baseline, which "
                         "trains the target's own adapter.")
    start = time.time()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_data(num_source, num_target, num_val, num_test, seed, path,
                     cache_dir)
    x_source, y_source = data["source"]
    x_target, y_target = data["target"]
    x_val, y_val = data["val"]
    x_test, y_test = data["test"]
    y_target, y_val, y_test = (y[TARGET_TASK] for y in (y_target, y_val,
                                                         y_test))
    sizes = dict(vocabulary_sizes=data["vocabulary_sizes"],
                 num_numeric=data["num_numeric"], hidden_dim=hidden_dim,
                 num_layers=num_layers, num_heads=num_heads)
    print(f"Backend: {keras.config.backend()}")
    print(
        f"Tokens: {data['num_numeric']} numeric + "
        f"{len(data['vocabulary_sizes'])} categorical columns; rows: "
        f"{len(y_source['income'])} source, {len(y_target)} target train, "
        f"{len(y_val)} target validation, {len(y_test)} test"
    )
    print("Positive rates: " + ", ".join(
        f"{t} {float(np.mean(y_source[t])):.3f}" for t in SOURCE_TASKS)
        + f", {TARGET_TASK} {float(np.mean(y_target)):.3f}")

    # Pre-training: masked-column modelling, no labels.
    began = time.time()
    backbone = build_backbone(**sizes)
    if pretraining == "multitask":
        loss = pretrain_multitask(backbone, x_source, y_source,
                                  pretrain_epochs, batch_size, run_eagerly)
    else:
        loss = pretrain_masked_columns(
            backbone, x_source, data["vocabulary_sizes"], pretrain_epochs,
            batch_size, rng, run_eagerly)
    pretrained = backbone.get_weights()
    backbone_params = num_params(backbone.weights)
    print(f"Pre-training ({pretraining}): backbone of {backbone_params:,} "
          f"parameters, final loss {loss:.3f} ({time.time() - began:.0f} s)")

    results = {}
    rows = []

    def record(method, label, model, transfer_params, seconds):
        auc, accuracy, _ = evaluate(model, x_test, y_test)
        head_params = num_params(model.trainable_weights) - transfer_params
        results[method] = dict(transfer_params=transfer_params,
                               head_params=head_params, auc=auc,
                               accuracy=accuracy, seconds=seconds)
        rows.append((label, results[method]))
        print(f"  {label}: test AUC {auc:.4f} ({seconds:.0f} s)")

    # Stage 1: one adapter per task on the frozen backbone.
    tasks = list(SOURCE_TASKS) + [TARGET_TASK]
    transfer.add_adapters(backbone, tasks, reduction_factor=reduction_factor)
    source_auc = {}
    began = time.time()
    for task in SOURCE_TASKS:
        transfer.set_active_adapter(backbone, task)
        model = task_model(backbone, task)
        fit(model, x_source, y_source[task], 1e-3, source_epochs, batch_size,
            run_eagerly=run_eagerly)
        source_auc[task], _, _ = evaluate(model, x_source, y_source[task])
    if SOURCE_TASKS:
        print("Stage 1, source adapters (training AUC): " + ", ".join(
            f"{t} {v:.3f}" for t, v in source_auc.items())
            + f" ({time.time() - began:.0f} s)")

    adapter_bytes = reload_difference = None
    if "adapter" in baselines:
        transfer.set_active_adapter(backbone, TARGET_TASK)
        began = time.time()
        model = task_model(backbone, TARGET_TASK)
        fit(model, x_target, y_target, 3e-3, target_epochs, batch_size,
            (x_val, y_val), run_eagerly)
        record("adapter", BASELINES["adapter"], model,
               transfer.count_transfer_parameters(backbone),
               time.time() - began)
        # The target adapter alone, through a small file, into a fresh copy
        # of the pre-trained backbone.
        with tempfile.TemporaryDirectory() as directory:
            file = os.path.join(directory, f"{TARGET_TASK}.adapter.npz")
            transfer.save_adapter(backbone, TARGET_TASK, file)
            adapter_bytes = os.path.getsize(file)
            fresh = build_backbone(name="reloaded_backbone", **sizes)
            fresh.set_weights(pretrained)
            transfer.load_adapter(fresh, TARGET_TASK, file)
        head = model.get_layer(f"{TARGET_TASK}_head")
        reloaded = task_model(fresh, TARGET_TASK, head=head)
        reloaded.compile(run_eagerly=run_eagerly)
        expected = model.predict(x_test, batch_size=2048, verbose=0)
        got = reloaded.predict(x_test, batch_size=2048, verbose=0)
        reload_difference = float(np.max(np.abs(expected - got)))
        print(f"save_adapter/load_adapter: {adapter_bytes:,} bytes for "
              f"{transfer.count_transfer_parameters(fresh, TARGET_TASK):,} "
              f"adapter weights (the backbone has {backbone_params:,}); "
              f"reloaded predictions differ by at most "
              f"{reload_difference:.1e}")

    # Stage 2: learn to combine the N frozen adapters on the target task.
    for combiner in combiners:
        keras.utils.set_random_seed(seed)
        transfer.add_combiner(backbone, tasks, combiner, name=combiner)
        began = time.time()
        model = task_model(backbone, combiner)
        learning_rate = 1e-3 if combiner == "adapter_fusion" else 1e-2
        fit(model, x_target, y_target, learning_rate, target_epochs,
            batch_size, (x_val, y_val), run_eagerly)
        record(combiner, COMBINERS[combiner], model,
               transfer.count_transfer_parameters(backbone),
               time.time() - began)

    for method in ("fine_tuning", "scratch"):
        if method not in baselines:
            continue
        keras.utils.set_random_seed(seed)
        began = time.time()
        network = build_backbone(name=f"{method}_backbone", **sizes)
        if method == "fine_tuning":
            network.set_weights(pretrained)
        model = task_model(network, method)
        fit(model, x_target, y_target, 1e-3, target_epochs, batch_size,
            (x_val, y_val), run_eagerly)
        record(method, BASELINES[method], model,
               num_params(network.trainable_weights), time.time() - began)

    n, layers = len(tasks), num_layers
    print(
        f"\nTarget task {TARGET_TASK!r}: {len(y_target)} training rows; "
        f"N = {n} adapters (4 sources + the target's own), d = {hidden_dim}, "
        f"L = {layers}, bottleneck {hidden_dim // reduction_factor}; "
        f"backend {keras.config.backend()}, {time.time() - start:.0f} s in "
        "all."
    )
    print(format_table(rows))
    return {
        "results": results,
        "sizes": {"N": n, "d": hidden_dim, "L": layers},
        "adapter_file_bytes": adapter_bytes,
        "reload_max_difference": reload_difference,
        "source_auc": source_auc,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-source", type=int, default=12000)
    parser.add_argument("--num-target", type=int, default=1500)
    parser.add_argument("--num-test", type=int, default=10000)
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--target-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretraining", default="multitask",
                        choices=("multitask", "masked_columns"))
    parser.add_argument("--path", default=None)
    args = parser.parse_args()
    main(num_source=args.num_source, num_target=args.num_target,
         num_test=args.num_test, hidden_dim=args.hidden_dim,
         num_layers=args.num_layers, target_epochs=args.target_epochs,
         seed=args.seed, pretraining=args.pretraining, path=args.path)
