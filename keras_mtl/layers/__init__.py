"""Drop-in Keras layers for multi-task and transfer learning."""

from keras_mtl.src.layers.cross_stitch import CrossStitch
from keras_mtl.src.layers.esmm_head import ESMMHead
from keras_mtl.src.layers.gradient_reversal import GradientReversal
from keras_mtl.src.layers.task_conditioning import TaskConditioning
from keras_mtl.src.layers.task_feature_refinement import TaskFeatureRefinement
from keras_mtl.src.layers.task_gate import TaskGate
