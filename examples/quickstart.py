"""Quick start: two regression tasks trained with PCGrad through `model.fit`.

The data come from the MMoE paper's synthetic recipe, with a task correlation
of 0.5. The model is a shared trunk with one head per task; every training
step computes both tasks' gradients of the shared trunk and combines them with
PCGrad. Run with any backend:

    KERAS_BACKEND=jax python examples/quickstart.py
"""

import argparse

import keras

import keras_mtl


def build_model(num_features):
    inputs = keras.Input((num_features,), name="features")
    h = keras.layers.Dense(64, activation="relu", name="trunk_1")(inputs)
    h = keras.layers.Dense(32, activation="relu", name="trunk_2")(h)
    outputs = {
        task: keras.layers.Dense(1, name=f"{task}_head")(
            keras.layers.Dense(16, activation="relu", name=f"{task}_tower")(h)
        )
        for task in ("task_1", "task_2")
    }
    return keras_mtl.MultiTaskModel(inputs, outputs, name="quickstart")


def main(epochs=20, num_samples=12000):
    keras.utils.set_random_seed(0)
    x, y = keras_mtl.datasets.synthetic_task_correlation(
        num_samples=num_samples, num_features=32, correlation=0.5, seed=0
    )
    split = int(0.8 * num_samples)
    train = (x[:split], {t: v[:split] for t, v in y.items()})
    test = (x[split:], {t: v[split:] for t, v in y.items()})

    model = build_model(x.shape[1])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"task_1": "mse", "task_2": "mse"},
        metrics={"task_1": ["mae"], "task_2": ["mae"]},
        aggregator="pcgrad",
    )
    print(f"Backend: {keras.config.backend()}")
    print("Shared variables:", [v.path for v in model.shared_variables])
    model.fit(*train, batch_size=128, epochs=epochs, verbose=2)
    results = model.evaluate(*test, batch_size=512, verbose=0, return_dict=True)
    print("\nTest results (PCGrad):")
    for task in model.task_names:
        baseline = float(test[1][task].var())
        print(
            f"  {task}: mse={results[f'{task}_loss']:.4f} "
            f"mae={results[f'{task}_mae']:.4f} "
            f"(predicting the mean: mse={baseline:.4f})"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=12000)
    args = parser.parse_args()
    main(args.epochs, args.num_samples)
