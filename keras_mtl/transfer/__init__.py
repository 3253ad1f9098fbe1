"""Transfer learning with adapters on keras-hub transformer backbones.

`add_adapters` inserts one bottleneck adapter per task into every
`keras_hub.layers.TransformerEncoder` of a backbone (with the backbone
frozen), `set_active_adapter` chooses the adapter that runs and trains,
`add_combiner` learns a combination of frozen source adapters (ScaLearn and
its variants, AdapterFusion, averaging), `save_adapter` / `load_adapter`
move one task's adapter through a small file, and
`count_transfer_parameters` counts the transfer parameters.
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
