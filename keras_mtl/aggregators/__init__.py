"""Gradient-balancing rules for `MultiTaskModel` (public API)."""

from keras_mtl.src.aggregators.aggregator import Aggregator
from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.constant import Constant
from keras_mtl.src.aggregators.mean import Mean
from keras_mtl.src.aggregators.mgda import MGDA
from keras_mtl.src.aggregators.min_norm_solver import min_norm_weights
from keras_mtl.src.aggregators.pcgrad import PCGrad
from keras_mtl.src.aggregators.registry import deserialize
from keras_mtl.src.aggregators.registry import get
from keras_mtl.src.aggregators.registry import serialize
from keras_mtl.src.aggregators.sum import Sum
