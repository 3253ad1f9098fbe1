"""Plots of training runs and adapter attention (public API; needs the
optional matplotlib: `pip install keras-mtl[plot]`)."""

from keras_mtl.src.plot.fusion_attention import fusion_attention
from keras_mtl.src.plot.training_plots import cosine_heatmap
from keras_mtl.src.plot.training_plots import gradient_norms
from keras_mtl.src.plot.training_plots import task_weights
