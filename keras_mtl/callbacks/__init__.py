"""Training callbacks (public API)."""

from keras_mtl.src.callbacks.conflict_monitor import ConflictMonitor
from keras_mtl.src.callbacks.gradient_reversal_schedule import (
    GradientReversalSchedule,
)
