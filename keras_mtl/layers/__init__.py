"""Drop-in Keras layers for multi-task and transfer learning."""

from keras_mtl.src.layers.adapter_fusion import AdapterFusion
from keras_mtl.src.layers.adapter_hypernetwork import AdapterHypernetwork
from keras_mtl.src.layers.adapter_hypernetwork import TaskEmbedding
from keras_mtl.src.layers.add_adapter_experts import add_adapter_experts
from keras_mtl.src.layers.average_combiner import AverageCombiner
from keras_mtl.src.layers.bottleneck_adapter import BottleneckAdapter
from keras_mtl.src.layers.compacter_adapter import CompacterAdapter
from keras_mtl.src.layers.cross_stitch import CrossStitch
from keras_mtl.src.layers.customized_gate_control import CGC
from keras_mtl.src.layers.customized_gate_control import CustomizedGateControl
from keras_mtl.src.layers.dselect_k_gate import DSelectKGate
from keras_mtl.src.layers.esmm_head import ESMMHead
from keras_mtl.src.layers.gradient_reversal import GradientReversal
from keras_mtl.src.layers.hyper_adapter import HyperAdapter
from keras_mtl.src.layers.ia3_adapter import IA3Adapter
from keras_mtl.src.layers.lora_adapter import LoRAAdapter
from keras_mtl.src.layers.mixture_of_adapter_experts import (
    MixtureOfAdapterExperts,
)
from keras_mtl.src.layers.mixture_of_experts import MixtureOfExperts
from keras_mtl.src.layers.multi_gate_mixture_of_experts import MMoE
from keras_mtl.src.layers.multi_gate_mixture_of_experts import (
    MultiGateMixtureOfExperts,
)
from keras_mtl.src.layers.parallel_adapter import ParallelAdapter
from keras_mtl.src.layers.phm_rule import PHMRule
from keras_mtl.src.layers.prefix_adapter import PrefixAdapter
from keras_mtl.src.layers.prefix_generator import PrefixGenerator
from keras_mtl.src.layers.progressive_layered_extraction import PLE
from keras_mtl.src.layers.progressive_layered_extraction import (
    ProgressiveLayeredExtraction,
)
from keras_mtl.src.layers.prompt_adapter import PromptAdapter
from keras_mtl.src.layers.scalearn import ScaLearn
from keras_mtl.src.layers.scalearn_scales import ScaLearnScales
from keras_mtl.src.layers.shared_private import SharedPrivate
from keras_mtl.src.layers.task_conditioning import TaskConditioning
from keras_mtl.src.layers.task_feature_refinement import TaskFeatureRefinement
from keras_mtl.src.layers.task_gate import TaskGate
