"""Transfer-parameter counts of ScaLearn and AdapterFusion (RoBERTa).

Builds RoBERTa-base (12 layers, d = 768) and RoBERTa-large (24 layers,
d = 1024) with random weights and a tiny vocabulary (the counts do not
depend on it), adds 8 Pfeiffer source adapters, then every combiner of
`keras_mtl.transfer.add_combiner`, and prints the number of trainable
transfer parameters of each. The expected values are those of the ScaLearn
paper (Frohmann et al., 2024, arXiv 2310.01217): AdapterFusion
3 d^2 + 2 d per layer; ScaLearn N d L; ScaLearnUniform N L; ScaLearn++ N d;
ScaLearnUniform++ N.

Run: `KERAS_BACKEND=jax python examples/scalearn_parameter_counts.py`
(`--base-only` skips RoBERTa-large, which takes longer and about 2 GB).
"""

import argparse
import math

import keras_hub

import keras_mtl

SIZES = {
    "RoBERTa-base": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12,
                     "intermediate_dim": 3072},
    "RoBERTa-large": {"num_layers": 24, "hidden_dim": 1024, "num_heads": 16,
                      "intermediate_dim": 4096},
}
COMBINERS = {
    "AdapterFusion": "adapter_fusion",
    "ScaLearn": "scalearn",
    "ScaLearnUniform": "scalearn_uniform",
    "ScaLearn++": "scalearn_plus_plus",
    "ScaLearnUniform++": "scalearn_uniform_plus_plus",
}
NUM_SOURCES = 8


def transfer_parameter_counts(num_layers, hidden_dim, num_heads,
                              intermediate_dim, num_sources=NUM_SOURCES,
                              vocabulary_size=8):
    """Builds a RoBERTa backbone and returns {method: transfer params}."""
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        max_sequence_length=8,
    )
    sources = [f"source_{i}" for i in range(num_sources)]
    keras_mtl.transfer.add_adapters(backbone, sources, config="pfeiffer")
    counts = {}
    for label, combiner in COMBINERS.items():
        keras_mtl.transfer.add_combiner(backbone, sources, combiner)
        count = keras_mtl.transfer.count_transfer_parameters(backbone)
        # The combination is active: its parameters are the only trainable
        # weights of the backbone.
        trainable = sum(math.prod(w.shape) for w in backbone.trainable_weights)
        assert count == trainable, (label, count, trainable)
        counts[label] = count
    counts["adapter (one task)"] = (
        keras_mtl.transfer.count_transfer_parameters(backbone, sources[0])
    )
    return counts


def main(models=tuple(SIZES)):
    results = {}
    for model in models:
        counts = transfer_parameter_counts(**SIZES[model])
        results[model] = counts
        print(f"{model} ({SIZES[model]['num_layers']} layers, "
              f"d = {SIZES[model]['hidden_dim']}, N = {NUM_SOURCES}):")
        for label, count in counts.items():
            print(f"  {label:<20} {count:>12,}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-only", action="store_true")
    args = parser.parse_args()
    main(("RoBERTa-base",) if args.base_only else tuple(SIZES))
