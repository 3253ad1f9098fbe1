"""Every balancing rule, F-MTL's sharpness and Rep-MTL on MultiMNIST and QM9.

Two real-data benchmarks of the multi-task optimisation literature, with the
metrics it reports:

- MultiMNIST (`keras_mtl.datasets.multi_mnist`; Sener & Koltun, NeurIPS 2018):
  two 10-way tasks, the top-left and the bottom-right digit of an overlay of
  two MNIST digits, with Sener & Koltun's LeNet (shared: conv 10@5x5, pool,
  conv 20@5x5, pool, dense 50; one dense 50 -> 10 head per task). Metric:
  test accuracy (higher is better).
- QM9 (`keras_mtl.datasets.qm9`): the 11 regression tasks, units and
  110,831 / 10,000 / 10,000 split of Navon et al. (Nash-MTL, ICML 2022).
  Navon et al. train a message-passing network on the molecular graph; this
  script trains an MLP on the sorted Coulomb-matrix eigenvalues (shared:
  three dense layers of 128 units, SiLU; one linear head per task), which
  trains on a CPU in minutes but is a much weaker model. Targets are
  standardised with the training mean and standard deviation for the loss
  (mean squared error); the metric is the test mean absolute error in the
  targets' units (lower is better).

Methods: every rule of `keras_mtl.aggregators.ALL_AGGREGATORS` except
`"constant"` (a user's fixed weights; with equal weights it is `"sum"`),
then F-MTL (`compile(sharpness="task")` on `"sum"`: `f_mtl` with F-MTL's
defaults, rho 2 and adaptive, and `f_mtl_sam` with its multi-MNIST code's,
plain SAM with rho 0.05) and
Rep-MTL (`saliency_regularizer="rep_mtl"` on the shared representation, on
`"sum"`), all with each rule's defaults and the same optimiser, schedule and
number of epochs. Each is trained for every seed; the test metrics of the
last epoch are reported.

Scores, as the literature reports them:
- Δm% (Maninis et al., 2019): the mean over tasks of the relative change of
  the metric against single-task training (one network per task, the same
  architecture with one head, same budget; averaged over the seeds), signed
  so that lower is better: `100/T sum_t (-1)^{higher_t} (M_t - S_t) / S_t`.
- MR, the mean rank: each method's rank per task (1 = best mean over the
  seeds) averaged over the tasks (Navon et al., 2022).
For QM9 the ranking is compared with the published one (Navon et al. 2022,
Liu et al. 2023): the Spearman correlation between our Δm% and the published
Δm% over the methods both report.

    KERAS_BACKEND=jax python examples/benchmark_methods.py

runs both data sets, three seeds and every method (about an hour on a 2-core
CPU with the default budget; `--datasets`, `--methods`, `--seeds`,
`--epochs` and `--train-size` shrink it). The tables of a full run are in
`examples/README.md`.
"""

import argparse
import json
import time

import keras
import numpy as np

import keras_mtl

# Δm% on QM9 as published for the rules both report, in their papers'
# names (Navon et al. 2022, Table 3, and Liu et al. 2023, FAMO, Table 3,
# which reuses it; a graph network, 300 epochs, mean of 3 seeds). Values as
# transcribed in the project's reference notes, not re-checked against the
# PDFs here; the ranking, not the values, is what the comparison uses.
PUBLISHED_QM9 = {
    "sum": ("LS", 177.6),
    "scale_invariant": ("SI", 77.8),
    "rlw": ("RLW", 203.8),
    "dwa": ("DWA", 175.3),
    "uncertainty_weighting": ("UW", 108.0),
    "mgda": ("MGDA", 120.5),
    "pcgrad": ("PCGrad", 125.7),
    "cagrad": ("CAGrad", 112.8),
    "imtl_g": ("IMTL-G", 77.2),
    "nash_mtl": ("Nash-MTL", 62.0),
    "famo": ("FAMO", 58.5),
}
EXTRA_METHODS = {
    "f_mtl": {"aggregator": "sum", "sharpness": "task"},
    # F-MTL's multi-MNIST code default: plain SAM with a small radius.
    "f_mtl_sam": {"aggregator": "sum", "sharpness": "task", "rho": 0.05,
                  "sharpness_adaptive": False},
    "rep_mtl": {
        "aggregator": "sum",
        "gradient_mode": "features",
        "features": "shared",
        "saliency_regularizer": "rep_mtl",
    },
}
# The budget of the recorded run (2-core CPU): MultiMNIST on a seeded
# 20,000-image subset of its training set, QM9 on all 110,831 molecules.
DEFAULTS = {
    "multi_mnist": {"epochs": 2, "batch_size": 256, "learning_rate": 1e-3,
                    "train_size": 20_000},
    "qm9": {"epochs": 2, "batch_size": 512, "learning_rate": 2e-3,
            "train_size": None},
}


def all_methods():
    rules = [n for n in keras_mtl.aggregators.ALL_AGGREGATORS
             if n != "constant"]
    return rules + list(EXTRA_METHODS)


def runs_on(method, num_tasks):
    """Whether the method's rule accepts `num_tasks` tasks (Krum and the
    trimmed mean need at least three)."""
    rule = keras_mtl.aggregators.get(compile_options(method)["aggregator"])
    try:
        rule.check_tasks(num_tasks)
    except ValueError:
        return False
    return True


def compile_options(method):
    if method in EXTRA_METHODS:
        return dict(EXTRA_METHODS[method])
    return {"aggregator": method}


class Benchmark:
    """One data set: its tensors, trunk, heads, losses and metric."""

    def __init__(self, name, train_size=None, qm9_tasks=None, seed=0):
        self.name = name
        rng = np.random.default_rng(seed)
        if name == "multi_mnist":
            (x, y), (x_test, y_test) = keras_mtl.datasets.multi_mnist()
            self.tasks = ("left", "right")
            self.higher_is_better = True
            self.scale = {t: 1.0 for t in self.tasks}
            self.offset = {t: 0.0 for t in self.tasks}
        elif name == "qm9":
            kwargs = {} if qm9_tasks is None else {"tasks": qm9_tasks}
            (x, y), _, (x_test, y_test), info = keras_mtl.datasets.qm9(
                with_info=True, **kwargs
            )
            self.tasks = info["tasks"]
            self.higher_is_better = False
            self.offset = {t: float(y[t].mean()) for t in self.tasks}
            self.scale = {t: float(y[t].std()) for t in self.tasks}
        else:
            raise ValueError(f"Unknown data set {name!r}.")
        if train_size is not None and train_size < len(x):
            keep = np.sort(rng.choice(len(x), train_size, replace=False))
            x, y = x[keep], {t: v[keep] for t, v in y.items()}
        self.x, self.x_test, self.y_test = x, x_test, y_test
        self.y = {t: self.normalise(t, y[t]) for t in self.tasks}

    def normalise(self, task, values):
        if self.name == "multi_mnist":
            return values
        return ((values - self.offset[task]) / self.scale[task]).astype(
            "float32"
        )

    def trunk(self, inputs):
        layers = keras.layers
        if self.name == "multi_mnist":
            h = layers.Conv2D(10, 5, activation="relu")(inputs)
            h = layers.MaxPooling2D()(h)
            h = layers.Conv2D(20, 5, activation="relu")(h)
            h = layers.MaxPooling2D()(h)
            h = layers.Flatten()(h)
            return layers.Dense(50, activation="relu", name="shared")(h)
        h = layers.Dense(128, activation="silu")(inputs)
        h = layers.Dense(128, activation="silu")(h)
        return layers.Dense(128, activation="silu", name="shared")(h)

    def head(self, features, task):
        if self.name == "multi_mnist":
            h = keras.layers.Dense(50, activation="relu")(features)
            return keras.layers.Dense(10, name=task)(h)
        return keras.layers.Dense(1, name=task)(features)

    def loss(self):
        if self.name == "multi_mnist":
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return "mse"

    def build(self, tasks, multi_task):
        inputs = keras.Input(self.x.shape[1:])
        features = self.trunk(inputs)
        outputs = {t: self.head(features, t) for t in tasks}
        if multi_task:
            return keras_mtl.MultiTaskModel(inputs, outputs)
        return keras.Model(inputs, outputs[tasks[0]])

    def metric(self, model, tasks):
        """Test accuracy (MultiMNIST) or MAE in the targets' units (QM9)."""
        predictions = model.predict(self.x_test, batch_size=4096, verbose=0)
        if not isinstance(predictions, dict):
            predictions = {tasks[0]: predictions}
        scores = {}
        for task in tasks:
            p = np.asarray(predictions[task], np.float64)
            if self.name == "multi_mnist":
                scores[task] = float(np.mean(p.argmax(-1) == self.y_test[task]))
            else:
                value = p * self.scale[task] + self.offset[task]
                scores[task] = float(np.mean(np.abs(value - self.y_test[task])))
        return scores


def train(bench, method, seed, epochs, batch_size, learning_rate):
    """Trains one model; returns its test metrics (a dict per task)."""
    keras.utils.set_random_seed(seed)
    steps = epochs * -(-len(bench.x) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    if method.startswith("single_task:"):
        task = method.split(":", 1)[1]
        model = bench.build((task,), multi_task=False)
        model.compile(keras.optimizers.Adam(schedule), loss=bench.loss())
        model.fit(bench.x, bench.y[task], batch_size=batch_size,
                  epochs=epochs, verbose=0)
        return bench.metric(model, (task,))
    model = bench.build(bench.tasks, multi_task=True)
    model.compile(keras.optimizers.Adam(schedule), loss=bench.loss(),
                  **compile_options(method))
    model.fit(bench.x, bench.y, batch_size=batch_size, epochs=epochs,
              verbose=0)
    return bench.metric(model, bench.tasks)


def delta_m(scores, baseline, higher_is_better):
    """Δm% of one run's per-task scores against the single-task means."""
    sign = -1.0 if higher_is_better else 1.0
    return 100.0 * float(np.mean([
        sign * (scores[t] - baseline[t]) / baseline[t] for t in baseline
    ]))


def ranks(values):
    """Ranks from 1 (smallest), ties sharing their mean rank."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    result = np.empty(len(values))
    result[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        result[tied] = result[tied].mean()
    return result


def mean_rank(per_task, higher_is_better):
    """Mean over tasks of each method's rank; `per_task[m][t]` are means."""
    methods = list(per_task)
    tasks = list(per_task[methods[0]])
    sign = -1.0 if higher_is_better else 1.0
    table = np.array([[sign * per_task[m][t] for t in tasks]
                      for m in methods])
    return dict(zip(methods, np.mean(
        [ranks(table[:, j]) for j in range(len(tasks))], axis=0)))


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float(ra @ rb / np.sqrt((ra @ ra) * (rb @ rb)))


def summarise(bench, runs, methods, seeds):
    """Per-method means, Δm% (mean ± std over seeds) and the mean rank."""
    baseline = {t: float(np.mean([runs[(f"single_task:{t}", s)][t]
                                  for s in seeds])) for t in bench.tasks}
    summary = {"single_task": {"metrics": baseline}}
    for method in methods:
        per_seed = [runs[(method, s)] for s in seeds]
        deltas = [delta_m(r, baseline, bench.higher_is_better)
                  for r in per_seed]
        summary[method] = {
            "metrics": {t: float(np.mean([r[t] for r in per_seed]))
                        for t in bench.tasks},
            "delta_m": float(np.mean(deltas)),
            "delta_m_std": float(np.std(deltas)),
        }
    rank = mean_rank({m: summary[m]["metrics"] for m in methods},
                     bench.higher_is_better)
    for method in methods:
        summary[method]["mean_rank"] = float(rank[method])
    return summary


def format_table(bench, summary, methods):
    metric = "accuracy" if bench.higher_is_better else "MAE"
    header = ["method", *bench.tasks, "Δm% ↓", "MR ↓", "s / run"]
    rows = [["single-task", *(f"{summary['single_task']['metrics'][t]:.4g}"
                              for t in bench.tasks), "0.0", "", ""]]
    for method in sorted(methods, key=lambda m: summary[m]["delta_m"]):
        entry = summary[method]
        rows.append([
            method,
            *(f"{entry['metrics'][t]:.4g}" for t in bench.tasks),
            f"{entry['delta_m']:.1f} ± {entry['delta_m_std']:.1f}",
            f"{entry['mean_rank']:.1f}",
            f"{entry['seconds']:.0f}",
        ])
    lines = [f"{bench.name}: test {metric} per task",
             "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def compare_with_published(summary):
    both = [m for m in PUBLISHED_QM9 if m in summary]
    if len(both) < 3:
        return None, ""
    ours = [summary[m]["delta_m"] for m in both]
    theirs = [PUBLISHED_QM9[m][1] for m in both]
    rho = spearman(ours, theirs)
    our_rank, their_rank = ranks(ours), ranks(theirs)
    lines = ["QM9 ranking against the published one (rank 1 = lowest Δm%)",
             "| method | published Δm% | rank | ours Δm% | rank |",
             "|---|---|---|---|---|"]
    for i in np.argsort(theirs):
        m = both[i]
        lines.append(f"| {PUBLISHED_QM9[m][0]} (`{m}`) | {theirs[i]:.1f} | "
                     f"{their_rank[i]:.0f} | {ours[i]:.1f} | "
                     f"{our_rank[i]:.0f} |")
    lines.append(f"Spearman rank correlation over {len(both)} methods: "
                 f"{rho:.2f}")
    return rho, "\n".join(lines)


def main(datasets=("multi_mnist", "qm9"), methods=None, seeds=(0, 1, 2),
         epochs=None, train_size=None, batch_size=None, qm9_tasks=None,
         output=None, verbose=True):
    """Runs the benchmark; returns `{dataset: summary}` and prints tables.

    `qm9_tasks` picks some of QM9's tasks (Navon et al.'s 11 by default);
    the other arguments are those of the command line.
    """
    methods = list(all_methods() if methods is None else methods)
    unknown = [m for m in methods if m not in all_methods()]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from "
                         f"{all_methods()}. Received: methods={methods}")
    unknown = [d for d in datasets if d not in DEFAULTS]
    if unknown:
        raise ValueError(f"`datasets` must name {tuple(DEFAULTS)}. "
                         f"Received: datasets={list(datasets)}")
    results = {}
    for name in datasets:
        budget = dict(DEFAULTS[name])
        size = budget.pop("train_size")
        size = size if train_size is None else train_size
        bench = Benchmark(name, train_size=size, qm9_tasks=qm9_tasks)
        if epochs is not None:
            budget["epochs"] = epochs
        if batch_size is not None:
            budget["batch_size"] = batch_size
        runs, seconds = {}, {}
        single = [f"single_task:{t}" for t in bench.tasks]
        usable = [m for m in methods if runs_on(m, len(bench.tasks))]
        for method in single + usable:
            start = time.perf_counter()
            for seed in seeds:
                runs[(method, seed)] = train(bench, method, seed, **budget)
            seconds[method] = (time.perf_counter() - start) / len(seeds)
            if verbose:
                print(f"[{name}] {method}: {seconds[method]:.1f} s per seed",
                      flush=True)
        summary = summarise(bench, runs, usable, seeds)
        for method in usable:
            summary[method]["seconds"] = seconds[method]
        summary["seeds"] = list(seeds)
        summary["skipped"] = [m for m in methods if m not in usable]
        summary["budget"] = budget
        summary["train_size"] = len(bench.x)
        if name == "qm9":
            rho, text = compare_with_published(summary)
            summary["spearman_vs_published"] = rho
        else:
            text = ""
        if verbose:
            print(format_table(bench, summary, usable))
            if summary["skipped"]:
                print(f"Not run (too few tasks): {summary['skipped']}")
            if text:
                print(text)
        results[name] = summary
    if output is not None:
        with open(output, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+",
                        default=["multi_mnist", "qm9"])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--qm9-tasks", nargs="+", default=None)
    parser.add_argument("--output", default=None,
                        help="write the summaries as JSON to this file")
    args = parser.parse_args()
    main(datasets=args.datasets, methods=args.methods, seeds=args.seeds,
         epochs=args.epochs, train_size=args.train_size,
         batch_size=args.batch_size, qm9_tasks=args.qm9_tasks,
         output=args.output)
