"""Drop-in Keras layers for multi-task and transfer learning."""

from keras_mtl.src.layers.adapter_fusion import AdapterFusion
from keras_mtl.src.layers.average_combiner import AverageCombiner
from keras_mtl.src.layers.bottleneck_adapter import BottleneckAdapter
from keras_mtl.src.layers.parallel_adapter import ParallelAdapter
from keras_mtl.src.layers.scalearn import ScaLearn
from keras_mtl.src.layers.scalearn_scales import ScaLearnScales
