"""MMoE versus shared-bottom as the task correlation falls (MMoE paper, §3.3).

Ma et al. ("Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018) generate two regression tasks whose
weight vectors have cosine similarity `p` (`keras_mtl.datasets.
synthetic_task_correlation`) and find that a shared-bottom model degrades as
`p` falls, while MMoE (one softmax gate per task over shared experts) is
hardly affected; OMoE (one gate shared by both tasks) lies in between. This
script repeats the comparison for a few correlations and seeds and prints
the mean and standard deviation of the final test loss (the MSE averaged
over the two tasks, on 20% held-out samples) per model and correlation.

Data constants. The paper publishes neither the sine frequencies `alpha_i`
nor the phases `beta_i`. With the google-research constants
(`alpha_i = i`, up to 10; `constants="google"`) the labels oscillate so
fast that every model here overfits 9,600 samples within a few epochs and
ends near the label variance, which says nothing about task relatedness.
The default, `constants="normal"`, draws `alpha, beta ~ N(0, 1)` once (NumPy
seed 2018), as drawbridge/keras-mmoe's synthetic demo does; the label
correlation (printed under the table) grows from about 0 at `p = 0` to
about 1 at `p = 1`. Every seed draws new weight vectors, inputs
and initial weights.

Models (about the same number of weights; 100 inputs):
- shared-bottom: Dense(`num_experts * expert_units`, relu) shared by both
  tasks;
- OMoE: `num_experts` experts of `expert_units` units, one shared gate
  (`keras_mtl.layers.MultiGateMixtureOfExperts` with one gate);
- MMoE: the same experts, one gate per task.
Each task has a tower Dense(8, relu) -> Dense(1). Loss: the sum of the two
MSEs (`keras_mtl.MultiTaskModel` with the default "sum" aggregator), Adam.

    KERAS_BACKEND=jax python examples/synthetic_task_correlation_study.py

Result of that command (3 seeds, 20 epochs; JAX on a shared 2-core CPU,
287 s), final test MSE, mean ± std (label variance about 2.2):

    p     Shared-bottom   OMoE            MMoE
    1.0   0.091 ± 0.005   0.077 ± 0.007   0.055 ± 0.011
    0.9   0.101 ± 0.013   0.076 ± 0.013   0.063 ± 0.012
    0.5   0.107 ± 0.013   0.087 ± 0.004   0.069 ± 0.007
    0.0   0.114 ± 0.021   0.093 ± 0.008   0.067 ± 0.008

Shared-bottom degrades as `p` falls and MMoE < OMoE < shared-bottom
throughout, as in the paper; but MMoE's margin over shared-bottom is almost
constant (+0.037 at p = 1 to +0.047 at p = 0, within the seed spread), so
the paper's growing advantage is not clearly reproduced at this budget.
"""

import argparse
import time

import keras
import numpy as np

import keras_mtl

TASKS = ("task_1", "task_2")
MODELS = ("shared_bottom", "omoe", "mmoe")
LABELS = {"shared_bottom": "Shared-bottom", "omoe": "OMoE", "mmoe": "MMoE"}
_RNG = np.random.default_rng(2018)
CONSTANTS = {
    "normal": {
        "alphas": _RNG.standard_normal(10),
        "betas": _RNG.standard_normal(10),
    },
    "google": {},  # The generator's defaults: alpha_i = i, beta_i = (i-1)^2.
}


def build_model(kind, num_features, num_experts, expert_units, tower_units):
    inputs = keras.Input((num_features,), name="features")
    if kind == "shared_bottom":
        bottom = keras.layers.Dense(
            num_experts * expert_units, activation="relu", name="bottom"
        )(inputs)
        representations = [bottom, bottom]
    elif kind == "omoe":
        shared = keras_mtl.layers.MultiGateMixtureOfExperts(
            num_experts, expert_units, num_tasks=1, name="omoe"
        )(inputs)[0]
        representations = [shared, shared]
    elif kind == "mmoe":
        representations = keras_mtl.layers.MultiGateMixtureOfExperts(
            num_experts, expert_units, num_tasks=len(TASKS), name="mmoe"
        )(inputs)
    else:
        raise ValueError(f"`models` must be among {MODELS}. Received: {kind!r}")
    outputs = {}
    for task, h in zip(TASKS, representations):
        h = keras.layers.Dense(
            tower_units, activation="relu", name=f"{task}_tower"
        )(h)
        outputs[task] = keras.layers.Dense(1, name=task)(h)
    return keras_mtl.MultiTaskModel(inputs, outputs, name=kind)


def run_once(
    kind,
    correlation,
    seed,
    num_samples,
    epochs,
    batch_size,
    learning_rate,
    num_experts,
    expert_units,
    tower_units,
    constants="normal",
):
    """Trains one model on one data set; returns the final test losses."""
    x, y = keras_mtl.datasets.synthetic_task_correlation(
        num_samples=num_samples,
        num_features=100,
        correlation=correlation,
        seed=seed,
        **CONSTANTS[constants],
    )
    split = int(0.8 * num_samples)
    keras.utils.set_random_seed(seed)
    model = build_model(
        kind, x.shape[1], num_experts, expert_units, tower_units
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={task: "mse" for task in TASKS},
    )
    model.fit(
        x[:split],
        {t: v[:split] for t, v in y.items()},
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
    )
    results = model.evaluate(
        x[split:],
        {t: v[split:] for t, v in y.items()},
        batch_size=1024,
        verbose=0,
        return_dict=True,
    )
    variance = float(np.mean([y[t][split:].var() for t in TASKS]))
    loss = float(np.mean([results[f"{t}_loss"] for t in TASKS]))
    label_correlation = float(
        np.corrcoef(y["task_1"][:, 0], y["task_2"][:, 0])[0, 1]
    )
    return loss, variance, label_correlation


def format_table(results, correlations, models):
    header = f"{'correlation p':>13} | " + " | ".join(
        f"{LABELS[m]:>15}" for m in models
    )
    lines = [header, "-" * len(header)]
    for p in correlations:
        cells = []
        for m in models:
            values = np.array(results[(m, p)])
            cells.append(f"{values.mean():7.3f} ± {values.std():5.3f}")
        lines.append(f"{p:>13.2f} | " + " | ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def main(
    correlations=(1.0, 0.9, 0.5, 0.0),
    seeds=3,
    models=MODELS,
    num_samples=12000,
    epochs=20,
    batch_size=128,
    learning_rate=1e-3,
    num_experts=8,
    expert_units=16,
    tower_units=8,
    constants="normal",
):
    """Runs the study and prints the table.

    Args:
        correlations: the cosine similarities `p` to compare.
        seeds: runs per model and correlation (seeds 0, 1, ...).
        models: among `"shared_bottom"`, `"omoe"`, `"mmoe"`.
        num_samples: samples per data set (80% train, 20% test).
        epochs, batch_size, learning_rate: training budget.
        num_experts, expert_units, tower_units: model sizes.
        constants: `"normal"` or `"google"` (see the module docstring).

    Returns:
        `{(model, correlation): [final mean test MSE of each seed]}`, plus
        `{("variance", correlation): [label variance of each seed]}` and
        `{("label_correlation", correlation): [...]}`.
    """
    for kind in models:
        if kind not in MODELS:
            raise ValueError(
                f"`models` must be among {MODELS}. Received: models={models!r}"
            )
    if constants not in CONSTANTS:
        raise ValueError(
            f"`constants` must be one of {tuple(CONSTANTS)}. "
            f"Received: constants={constants!r}"
        )
    start = time.time()
    results = {}
    for p in correlations:
        for kind in models:
            for seed in range(seeds):
                loss, variance, label_correlation = run_once(
                    kind,
                    p,
                    seed,
                    num_samples,
                    epochs,
                    batch_size,
                    learning_rate,
                    num_experts,
                    expert_units,
                    tower_units,
                    constants,
                )
                results.setdefault((kind, p), []).append(loss)
                if kind == models[0]:
                    results.setdefault(("variance", p), []).append(variance)
                    results.setdefault(("label_correlation", p), []).append(
                        label_correlation
                    )
    elapsed = time.time() - start
    print(
        f"\nFinal test MSE (mean of the two tasks), mean ± std over {seeds} "
        f"seeds; {num_samples} samples (80% train), {epochs} epochs, "
        f"{num_experts} experts x {expert_units} units, {constants!r} "
        f"constants; backend "
        f"{keras.config.backend()}; {elapsed:.0f} s"
    )
    print(format_table(results, correlations, models))
    variances = ", ".join(
        f"p={p:g}: {np.mean(results[('variance', p)]):.2f}"
        for p in correlations
    )
    print(f"Label variance (the MSE of predicting the mean): {variances}")
    correlations_text = ", ".join(
        f"p={p:g}: {np.mean(results[('label_correlation', p)]):.2f}"
        for p in correlations
    )
    print(f"Pearson correlation of the two labels: {correlations_text}")
    if "mmoe" in models and "shared_bottom" in models:
        gap = {
            p: np.mean(results[("shared_bottom", p)])
            - np.mean(results[("mmoe", p)])
            for p in correlations
        }
        gaps = ", ".join(f"p={p:g}: {gap[p]:+.3f}" for p in correlations)
        print(f"Shared-bottom minus MMoE (positive: MMoE better): {gaps}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--correlations", type=float, nargs="+", default=[1.0, 0.9, 0.5, 0.0]
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--constants", default="normal", choices=sorted(CONSTANTS)
    )
    args = parser.parse_args()
    main(
        tuple(args.correlations),
        args.seeds,
        tuple(args.models),
        args.num_samples,
        args.epochs,
        constants=args.constants,
    )
