"""String names and (de)serialisation of aggregators, as Keras optimizers."""

import keras

from keras_mtl.src.aggregators.aggregator import Aggregator
from keras_mtl.src.aggregators.aligned_mtl import AlignedMTL
from keras_mtl.src.aggregators.auto_lambda import AutoLambda
from keras_mtl.src.aggregators.cagrad import CAGrad
from keras_mtl.src.aggregators.con_fig import ConFIG
from keras_mtl.src.aggregators.constant import Constant
from keras_mtl.src.aggregators.cosmos import COSMOS
from keras_mtl.src.aggregators.cr_mogm import CRMOGM
from keras_mtl.src.aggregators.db_mtl import DBMTL
from keras_mtl.src.aggregators.dualproj import DualProj
from keras_mtl.src.aggregators.dynamic_weight_average import (
    DynamicWeightAverage,
)
from keras_mtl.src.aggregators.excess_mtl import ExcessMTL
from keras_mtl.src.aggregators.fairgrad import FairGrad
from keras_mtl.src.aggregators.famo import FAMO
from keras_mtl.src.aggregators.forum import FORUM
from keras_mtl.src.aggregators.geometric_mean_loss import GeometricMeanLoss
from keras_mtl.src.aggregators.graddrop import GradDrop
from keras_mtl.src.aggregators.gradnorm import GradNorm
from keras_mtl.src.aggregators.gradvac import GradVac
from keras_mtl.src.aggregators.imtl_g import IMTLG
from keras_mtl.src.aggregators.imtl_l import IMTLL
from keras_mtl.src.aggregators.krum import Krum
from keras_mtl.src.aggregators.mean import Mean
from keras_mtl.src.aggregators.mgda import MGDA
from keras_mtl.src.aggregators.moco import MoCo
from keras_mtl.src.aggregators.modo import MoDo
from keras_mtl.src.aggregators.moml import MOML
from keras_mtl.src.aggregators.nash_mtl import NashMTL
from keras_mtl.src.aggregators.pcd import PCD
from keras_mtl.src.aggregators.pcgrad import PCGrad
from keras_mtl.src.aggregators.penalty_boundary_intersection import PBI
from keras_mtl.src.aggregators.random_loss_weighting import RandomLossWeighting
from keras_mtl.src.aggregators.scale_invariant import ScaleInvariant
from keras_mtl.src.aggregators.sdmgrad import SDMGrad
from keras_mtl.src.aggregators.stch import STCH
from keras_mtl.src.aggregators.sum import Sum
from keras_mtl.src.aggregators.trimmed_mean import TrimmedMean
from keras_mtl.src.aggregators.uncertainty_weighting import UncertaintyWeighting
from keras_mtl.src.aggregators.upgrad import UPGrad
from keras_mtl.src.api_export import keras_mtl_export

ALL_AGGREGATORS = {
    "sum": Sum,
    "mean": Mean,
    "constant": Constant,
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "imtl_g": IMTLG,
    "cagrad": CAGrad,
    "aligned_mtl": AlignedMTL,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "config": ConFIG,
    "rlw": RandomLossWeighting,
    "gls": GeometricMeanLoss,
    "scale_invariant": ScaleInvariant,
    "fairgrad": FairGrad,
    "nash_mtl": NashMTL,
    "gradvac": GradVac,
    "graddrop": GradDrop,
    "uncertainty_weighting": UncertaintyWeighting,
    "imtl_l": IMTLL,
    "dwa": DynamicWeightAverage,
    "stch": STCH,
    "famo": FAMO,
    "gradnorm": GradNorm,
    "db_mtl": DBMTL,
    "excess_mtl": ExcessMTL,
    "moco": MoCo,
    "krum": Krum,
    "trimmed_mean": TrimmedMean,
    "cr_mogm": CRMOGM,
    "cosmos": COSMOS,
    "pbi": PBI,
    "pcd": PCD,
    "modo": MoDo,
    "sdmgrad": SDMGrad,
    "auto_lambda": AutoLambda,
    "moml": MOML,
    "forum": FORUM,
}


@keras_mtl_export("keras_mtl.aggregators.serialize")
def serialize(aggregator):
    """Returns the JSON-serialisable config of `aggregator`.

    Example:

    >>> config = keras_mtl.aggregators.serialize(
    ...     keras_mtl.aggregators.MGDA(normalization="l2"))
    """
    return keras.saving.serialize_keras_object(aggregator)


@keras_mtl_export("keras_mtl.aggregators.deserialize")
def deserialize(config, custom_objects=None):
    """Rebuilds an aggregator from `serialize`'s output or a string name.

    Args:
        config: a dict made by `serialize`, or a string name.
        custom_objects: optional dict of user-defined aggregator classes.

    Example:

    >>> agg = keras_mtl.aggregators.deserialize(
    ...     keras_mtl.aggregators.serialize(keras_mtl.aggregators.PCGrad()))
    """
    if isinstance(config, str):
        return get(config)
    return keras.saving.deserialize_keras_object(
        config, custom_objects=custom_objects
    )


@keras_mtl_export("keras_mtl.aggregators.get")
def get(identifier):
    """Returns an aggregator from a name, a config dict or an instance.

    Args:
        identifier: an `Aggregator` (returned as is), a string name such as
            `"pcgrad"` (the class built with its defaults), or a dict made by
            `serialize`.

    Example:

    >>> agg = keras_mtl.aggregators.get("mgda")
    """
    if isinstance(identifier, Aggregator):
        return identifier
    if isinstance(identifier, dict):
        aggregator = deserialize(identifier)
        if isinstance(aggregator, Aggregator):
            return aggregator
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ALL_AGGREGATORS:
            return ALL_AGGREGATORS[key]()
        raise ValueError(
            f"Unknown aggregator name. Known names: {sorted(ALL_AGGREGATORS)}. "
            f"Received: aggregator={identifier!r}"
        )
    raise ValueError(
        "Could not interpret the aggregator identifier: expected an "
        "Aggregator, a name or a config dict. "
        f"Received: aggregator={identifier!r}"
    )
