"""Transfer learning with adapters on keras-hub transformer backbones.

Works with every backbone made of `keras_hub.layers.TransformerEncoder`
or `TransformerDecoder` (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ALBERT,
ELECTRA, GPT-2, ... or your own stack); keras-hub must be installed.

Workflow (two-stage transfer as in ScaLearn, Frohmann et al., 2024):

1. `add_adapters(backbone, ["mnli", "sst2", ...])` inserts one bottleneck
   adapter per task into every encoder and freezes the backbone;
   `set_active_adapter(backbone, "sst2")` picks the adapter that runs and
   trains (compile the model after each change). Train each task's adapter
   with its own head.
2. `add_combiner(backbone, source_task_names, "scalearn")` adds a learned
   combination of the frozen source adapters; only its parameters train.
   `count_transfer_parameters(backbone)` counts them.

Methods (`config=` of `add_adapters`): bottleneck adapters (Pfeiffer,
Houlsby), scaled parallel adapters, LoRA, (IA)^3, Compacter, prefix tuning
(`eject_prefix` drops its MLP), prompt tuning, MAM, Hyperformer (`"hyper"`,
one hypernetwork for all tasks) and `ConfigUnion`s of these; shared
adapters (`shared=True`); compositions (`Stack`, `BatchSplit`, `Parallel`
with `replicate_batch` / `split_batch`) as the active setting; merging
(`merge_adapter`, `average_adapter`).

Task vectors (Ilharco et al., 2023) and aTLAS (Zhang et al., 2024):

- `tau = task_vector(fine_tuned, pre_trained)` is the weight change of a
  fine-tuned model; task vectors add, negate and scale, and
  `task_arithmetic(model, [tau_a, tau_b], scaling_coef=0.5)` adds them to
  a model's weights. `tau.save(path)` / `TaskVector.load(path)`.
- `learn_task_vector_scaling(model, [tau_a, tau_b], x, y, loss=...)` learns
  one coefficient per task vector and variable (aTLAS) with everything
  else frozen; `TaskVectorComposition` is the model it trains.

Saving and loading:

- One adapter: `save_adapter(backbone, "sst2", "sst2.adapter.npz")`, then
  `load_adapter(other_backbone, "sst2", "sst2.adapter.npz")` (which adds
  the adapter if needed, and checks sizes).
- A whole adapted model: a `keras_mtl.MultiTaskModel` whose backbone
  carries adapters (with combiners, adapter experts, the active adapter
  and the frozen backbone) round-trips through `model.save("m.keras")` and
  `keras.saving.load_model("m.keras")`, optimizer state included: its
  config stores `describe_transfer(model)`, and loading calls
  `restore_transfer` on the rebuilt model before the weights are loaded.
  For another model, do the same by hand:

      layout = describe_transfer(model)          # JSON-serialisable
      rebuilt = keras.Model.from_config(model.get_config())
      restore_transfer(rebuilt, layout)
      rebuilt.load_weights("m.weights.h5")       # saved from `model`
"""

from keras_mtl.src.transfer.adapter_configs import BottleneckConfig
from keras_mtl.src.transfer.adapter_configs import CompacterConfig
from keras_mtl.src.transfer.adapter_configs import ConfigUnion
from keras_mtl.src.transfer.adapter_configs import HyperConfig
from keras_mtl.src.transfer.adapter_configs import IA3Config
from keras_mtl.src.transfer.adapter_configs import LoRAConfig
from keras_mtl.src.transfer.adapter_configs import MAMConfig
from keras_mtl.src.transfer.adapter_configs import ParallelConfig
from keras_mtl.src.transfer.adapter_configs import PrefixTuningConfig
from keras_mtl.src.transfer.adapter_configs import PromptTuningConfig
from keras_mtl.src.transfer.adapter_files import load_adapter
from keras_mtl.src.transfer.adapter_files import save_adapter
from keras_mtl.src.transfer.adapter_wrapper import AdapterWrapper
from keras_mtl.src.transfer.add_adapters import add_adapters
from keras_mtl.src.transfer.add_combiner import COMBINERS
from keras_mtl.src.transfer.add_combiner import add_combiner
from keras_mtl.src.transfer.average_adapter import average_adapter
from keras_mtl.src.transfer.composition import BatchSplit
from keras_mtl.src.transfer.composition import Parallel
from keras_mtl.src.transfer.composition import Stack
from keras_mtl.src.transfer.composition import replicate_batch
from keras_mtl.src.transfer.composition import split_batch
from keras_mtl.src.transfer.count_transfer_parameters import (
    count_transfer_parameters,
)
from keras_mtl.src.transfer.eject_prefix import eject_prefix
from keras_mtl.src.transfer.merge_adapter import merge_adapter
from keras_mtl.src.transfer.set_active_adapter import set_active_adapter
from keras_mtl.src.transfer.task_vector import TaskVector
from keras_mtl.src.transfer.task_vector import task_arithmetic
from keras_mtl.src.transfer.task_vector import task_vector
from keras_mtl.src.transfer.task_vector_composition import TaskVectorComposition
from keras_mtl.src.transfer.task_vector_composition import (
    learn_task_vector_scaling,
)
from keras_mtl.src.transfer.transfer_layout import describe_transfer
from keras_mtl.src.transfer.transfer_layout import restore_transfer
