"""Auxiliary learning with meta-learnt task weights (Auto-Lambda, MOML, FORUM).

A primary regression task has few labels; three auxiliary tasks are fully
labelled: one closely related to the primary (weight vectors with cosine
0.9), two unrelated (orthogonal weight vectors). The bilevel rules decide
how much each auxiliary task should count: they learn the weights
`softmax(alpha)` from a virtual step on half of each batch, judged on the
other half: Auto-Lambda with `primary=[0]` (only the primary task's loss
is the outer objective), MOML and FORUM (every task's loss). They are
compared with equal weights (`sum`) and with training on the primary labels
only (`loss_weights`), on the test MSE of the primary task. Missing primary
labels are NaN, which `MultiTaskModel` leaves out of the loss.

    KERAS_BACKEND=jax python examples/auxiliary_learning.py

Result of that command (defaults: 30 epochs, 300 primary labels of 4,000
training rows, 2 seeds; JAX on a shared 2-core CPU, 136 s), test MSE of the
primary task (label variance 5.65) and the last logged task weights
(primary, related, unrelated_1, unrelated_2):

    primary only  0.228   last weights 1.00 0.00 0.00 0.00
    sum           0.171   last weights 1.00 1.00 1.00 1.00
    auto_lambda   0.172   last weights 0.27 0.25 0.24 0.24
    moml          0.167   last weights 0.26 0.29 0.23 0.23
    forum         0.152   last weights 0.21 0.38 0.32 0.36

The fully labelled auxiliary tasks cut the primary task's error by a
quarter. Auto-Lambda shifts weight towards the primary task, slowly: its
logits take Adam steps of 1e-3 (LibMTL's default), so over 1,900 steps the
weights stay near uniform. FORUM's weights are its row weights (`nu w_t`
plus `lambda_t / ||g_t||`), not a convex combination. The softmax weights
sum to 1 where `sum`'s sum to 4, which also scales the effective learning
rate; tune it per method before drawing conclusions from a table like this.
"""

import argparse

import keras
import numpy as np

import keras_mtl

TASKS = ("primary", "related", "unrelated_1", "unrelated_2")


def make_data(num_samples, primary_labels, seed, num_features=16):
    """Four tasks `y = 2 w.x + sin(2 w.x) + noise` on unit directions `w`:
    the primary, a related one (cosine 0.9 with it) and two unrelated
    (orthogonal to both)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(num_features, 4)))[0].T
    directions = {
        "primary": basis[0],
        "related": 0.9 * basis[0] + np.sqrt(1.0 - 0.81) * basis[1],
        "unrelated_1": basis[2],
        "unrelated_2": basis[3],
    }
    x = rng.normal(size=(num_samples, num_features)).astype("float32")
    labels = {}
    for task, w in directions.items():
        s = 2.0 * x @ w
        noise = 0.1 * rng.normal(size=num_samples)
        labels[task] = (s + np.sin(s) + noise)[:, None].astype("float32")
    split = int(0.8 * num_samples)
    train_y = {t: v[:split].copy() for t, v in labels.items()}
    train_y["primary"][primary_labels:] = np.nan
    test_y = {t: v[split:] for t, v in labels.items()}
    return (x[:split], train_y), (x[split:], test_y)


def build(num_features):
    inputs = keras.Input((num_features,))
    z = keras.layers.Dense(64, activation="relu")(inputs)
    z = keras.layers.Dense(32, activation="relu", name="features")(z)
    outputs = {t: keras.layers.Dense(1, name=t)(
        keras.layers.Dense(16, activation="relu")(z)) for t in TASKS}
    return keras_mtl.MultiTaskModel(inputs, outputs)


def methods():
    return {
        "primary only": {"loss_weights": {"primary": 1.0, "related": 0.0,
                                          "unrelated_1": 0.0,
                                          "unrelated_2": 0.0}},
        "sum": {"aggregator": "sum"},
        "auto_lambda": {"aggregator": keras_mtl.aggregators.AutoLambda(
            primary=[0])},
        "moml": {"aggregator": "moml"},
        "forum": {"aggregator": "forum"},
    }


def main(epochs=30, num_samples=5000, primary_labels=300, seeds=2,
         batch_size=64, names=None):
    results = {}
    for name, options in methods().items():
        if names is not None and name not in names:
            continue
        scores, weights = [], []
        for seed in range(seeds):
            keras.utils.set_random_seed(seed)
            (x, y), (x_test, y_test) = make_data(num_samples, primary_labels,
                                                 seed)
            model = build(x.shape[1])
            model.compile(keras.optimizers.Adam(1e-3),
                          loss={t: "mse" for t in TASKS}, **options)
            history = model.fit(x, y, batch_size=batch_size, epochs=epochs,
                                verbose=0)
            logs = model.evaluate(x_test, y_test, batch_size=512, verbose=0,
                                  return_dict=True)
            scores.append(logs["primary_loss"])
            weights.append([history.history[f"{t}_weight"][-1]
                            for t in TASKS])
        results[name] = (float(np.mean(scores)), np.mean(weights, axis=0))
    variance = float(make_data(num_samples, primary_labels, 0)[1][1]
                     ["primary"].var())
    print(f"Test MSE of the primary task ({primary_labels} labels; label "
          f"variance {variance:.2f}), mean over {seeds} seeds:")
    for name, (score, weights) in results.items():
        shown = " ".join(f"{w:.2f}" for w in weights)
        print(f"  {name:<13} {score:.3f}   last weights {shown}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--primary-labels", type=int, default=300)
    args = parser.parse_args()
    main(args.epochs, seeds=args.seeds, primary_labels=args.primary_labels)
