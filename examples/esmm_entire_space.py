"""ESMM: estimating the conversion rate over the entire impression space.

A CVR model is normally trained on clicked impressions only (the only ones
whose conversion is observed) but used on every impression. When the items
that get clicked are also the ones that convert (here both depend on an
item's latent quality), the clicked sample is not representative: the
clicked-only model rarely sees low-quality items, and its estimate for them
stays near the high conversion rate of the clicked population (sample
selection bias, made worse by the sparsity of clicks).

ESMM (Ma et al., SIGIR 2018) trains pCTR and pCTCVR = pCTR * pCVR on every
impression, with the item embedding shared by the CTR and CVR towers; pCVR
is never supervised directly. The generated data know each impression's
true pCVR (the probability of converting if clicked), so the script prints
the bias of both estimates over all test impressions, and the AUC of each
against the conversions that every impression would have had if clicked.
Run with any backend:

    KERAS_BACKEND=jax python examples/esmm_entire_space.py
"""

import argparse

import keras
import numpy as np

import keras_mtl


def generate(num_impressions, num_items=300, num_user_features=4, seed=0):
    """Impressions with known click and conversion probabilities."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=num_items)
    w_click = rng.normal(size=num_user_features) / 2
    w_convert = rng.normal(size=num_user_features) / 2
    item = rng.integers(0, num_items, size=num_impressions)
    user = rng.normal(size=(num_impressions, num_user_features))
    click_logit = -2.0 + 1.5 * quality[item] + user @ w_click
    cvr_logit = -0.5 + 1.5 * quality[item] + user @ w_convert
    p_click = 1 / (1 + np.exp(-click_logit))
    p_cvr = 1 / (1 + np.exp(-cvr_logit))
    click = rng.uniform(size=num_impressions) < p_click
    # Conversion had the impression been clicked; observed only if clicked.
    would_convert = rng.uniform(size=num_impressions) < p_cvr
    features = {
        "item": item.astype("int32")[:, None],
        "user": user.astype("float32"),
    }
    return features, {
        "click": click.astype("float32")[:, None],
        "conversion": (click & would_convert).astype("float32")[:, None],
        "would_convert": would_convert.astype("float32"),
        "p_cvr": p_cvr,
    }


def inputs_and_embedding(num_items, num_user_features, prefix):
    item = keras.Input((1,), dtype="int32", name="item")
    user = keras.Input((num_user_features,), name="user")
    embedded = keras.layers.Flatten()(
        keras.layers.Embedding(num_items, 8, name=f"{prefix}_item_embedding")(
            item
        )
    )
    shared = keras.layers.Concatenate()([embedded, user])
    return {"item": item, "user": user}, shared


def tower(features, name):
    h = keras.layers.Dense(32, activation="relu", name=f"{name}_hidden")(
        features
    )
    return keras.layers.Dense(1, name=f"{name}_logit")(h)


def build_esmm(num_items, num_user_features):
    """Returns (training model over ctr/ctcvr, pCVR model)."""
    inputs, shared = inputs_and_embedding(num_items, num_user_features,
                                          "esmm")
    ctr_logit = tower(shared, "ctr")
    cvr_logit = tower(shared, "cvr")
    out = keras_mtl.layers.ESMMHead(output_mode="logits")(
        [ctr_logit, cvr_logit]
    )
    model = keras_mtl.MultiTaskModel(
        inputs, {"ctr": ctr_logit, "ctcvr": out["ctcvr"]}, name="esmm"
    )
    return model, keras.Model(inputs, out["cvr"], name="esmm_pcvr")


def build_clicked_only(num_items, num_user_features):
    inputs, shared = inputs_and_embedding(num_items, num_user_features,
                                          "base")
    return keras.Model(inputs, tower(shared, "cvr"), name="clicked_only")


def auc(labels, scores):
    """Area under the ROC curve (Mann-Whitney statistic, ties averaged)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    ranks[order] = np.arange(1, len(scores) + 1)
    # Average the ranks of tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True,
                                 return_counts=True)
    for start, count in zip(first, counts):
        if count > 1:
            ranks[order[start:start + count]] = start + (count + 1) / 2
    positives = labels > 0.5
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return (ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def main(num_impressions=100000, epochs=5, batch_size=256, aggregator="sum",
         seed=0):
    keras.utils.set_random_seed(seed)
    num_items, num_user_features = 300, 4
    x, data = generate(num_impressions, num_items, num_user_features, seed)
    split = int(0.8 * num_impressions)
    train_x = {k: v[:split] for k, v in x.items()}
    test_x = {k: v[split:] for k, v in x.items()}
    train = {k: v[:split] for k, v in data.items()}
    test = {k: v[split:] for k, v in data.items()}
    bce = keras.losses.BinaryCrossentropy(from_logits=True)

    esmm, esmm_pcvr = build_esmm(num_items, num_user_features)
    esmm.compile(keras.optimizers.Adam(3e-3), loss={"ctr": bce, "ctcvr": bce},
                 aggregator=aggregator)
    esmm.fit(train_x, {"ctr": train["click"], "ctcvr": train["conversion"]},
             batch_size=batch_size, epochs=epochs, verbose=0)

    clicked = train["click"][:, 0] > 0.5
    base = build_clicked_only(num_items, num_user_features)
    base.compile(keras.optimizers.Adam(3e-3), loss=bce)
    base.fit({k: v[clicked] for k, v in train_x.items()},
             train["conversion"][clicked], batch_size=batch_size,
             epochs=epochs, verbose=0)

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    predictions = {
        "ESMM (entire space)": sigmoid(
            esmm_pcvr.predict(test_x, batch_size=4096, verbose=0)[:, 0]),
        "clicked-only CVR": sigmoid(
            base.predict(test_x, batch_size=4096, verbose=0)[:, 0]),
    }
    true_pcvr = test["p_cvr"]
    test_clicked = test["click"][:, 0] > 0.5
    print(f"Backend: {keras.config.backend()}; {num_impressions} impressions "
          f"({clicked.mean():.1%} clicked), {epochs} epochs, ESMM aggregator "
          f"{aggregator!r}")
    print(f"Mean true pCVR over all test impressions: {true_pcvr.mean():.4f} "
          f"(over clicked ones: {true_pcvr[test_clicked].mean():.4f})")
    header = (f"{'model':<22}{'mean pCVR':>10}{'bias':>9}{'|bias|':>8}"
              f"{'bias (clicked)':>16}{'AUC':>8}")
    print(header)
    print("-" * len(header))
    results = {}
    for name, pred in predictions.items():
        bias = float(pred.mean() - true_pcvr.mean())
        bias_clicked = float(pred[test_clicked].mean()
                             - true_pcvr[test_clicked].mean())
        score = float(auc(test["would_convert"], pred))
        results[name] = {"mean": float(pred.mean()), "bias": bias,
                         "bias_clicked": bias_clicked, "auc": score}
        print(f"{name:<22}{pred.mean():>10.4f}{bias:>+9.4f}{abs(bias):>8.4f}"
              f"{bias_clicked:>+16.4f}{score:>8.4f}")
    print("AUC: predicted pCVR against the conversion each impression would "
          "have had if clicked (all test impressions).")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-impressions", type=int, default=100000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--aggregator", default="sum")
    args = parser.parse_args()
    main(args.num_impressions, args.epochs, aggregator=args.aggregator)
