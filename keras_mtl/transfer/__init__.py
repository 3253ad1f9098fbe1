"""Transfer learning with adapters on keras-hub transformer backbones.

Works with every backbone made of `keras_hub.layers.TransformerEncoder`
(BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ALBERT, ELECTRA, ... or your own
stack); keras-hub must be installed.

Workflow (two-stage transfer as in ScaLearn, Frohmann et al., 2024):

1. `add_adapters(backbone, ["mnli", "sst2", ...])` inserts one bottleneck
   adapter per task into every encoder and freezes the backbone;
   `set_active_adapter(backbone, "sst2")` picks the adapter that runs and
   trains (compile the model after each change). Train each task's adapter
   with its own head.
2. `add_combiner(backbone, source_task_names, "scalearn")` adds a learned
   combination of the frozen source adapters; only its parameters train.
   `count_transfer_parameters(backbone)` counts them.

Saving and loading:

- One adapter: `save_adapter(backbone, "sst2", "sst2.adapter.npz")`, then
  `load_adapter(other_backbone, "sst2", "sst2.adapter.npz")` (which adds
  the adapter if needed, and checks sizes).
- A whole adapted model: `model.save("m.keras")` works, but the backbone's
  config knows nothing of adapters, so `keras.saving.load_model("m.keras")`
  returns the backbone *without* them (its own weights loaded). Re-inject
  with the same calls, then reload all weights:

      restored = keras.saving.load_model("m.keras")
      add_adapters(restored, task_names)        # same arguments as before
      add_combiner(restored, sources, "scalearn")  # if there was one
      restored.load_weights("m.keras")
"""

from keras_mtl.src.transfer.adapter_files import load_adapter
from keras_mtl.src.transfer.adapter_files import save_adapter
from keras_mtl.src.transfer.adapter_wrapper import AdapterWrapper
from keras_mtl.src.transfer.add_adapters import add_adapters
from keras_mtl.src.transfer.add_combiner import COMBINERS
from keras_mtl.src.transfer.add_combiner import add_combiner
from keras_mtl.src.transfer.count_transfer_parameters import (
    count_transfer_parameters,
)
from keras_mtl.src.transfer.set_active_adapter import set_active_adapter
