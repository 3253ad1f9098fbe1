"""Drop-in Keras layers for multi-task and transfer learning."""

from keras_mtl.src.layers.dselect_k_gate import DSelectKGate
from keras_mtl.src.layers.multi_gate_mixture_of_experts import MMoE
from keras_mtl.src.layers.multi_gate_mixture_of_experts import (
    MultiGateMixtureOfExperts,
)
