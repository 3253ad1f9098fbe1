"""keras_mtl: multi-task and transfer learning for Keras 3."""

from keras_mtl import aggregators
from keras_mtl import analysis
from keras_mtl import callbacks
from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import distribute
from keras_mtl import layers
from keras_mtl import losses
from keras_mtl import plot
from keras_mtl import transfer
from keras_mtl.src.models.multi_task_model import MultiTaskModel
from keras_mtl.src.models.multi_task_trainer import MultiTaskTrainer
from keras_mtl.src.version import __version__
