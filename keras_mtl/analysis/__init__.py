"""Analysis of task relations (public API)."""

from keras_mtl.src.analysis.group_tasks import group_tasks
from keras_mtl.src.analysis.task_affinity import task_affinity
