"""Gradient-balancing rules for `MultiTaskModel` (public API)."""

from keras_mtl.src.aggregators.aggregator import Aggregator
from keras_mtl.src.aggregators.aggregator import Weighting
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
from keras_mtl.src.aggregators.geometric_mean_loss import GeometricMeanLoss
from keras_mtl.src.aggregators.graddrop import GradDrop
from keras_mtl.src.aggregators.gradnorm import GradNorm
from keras_mtl.src.aggregators.gradvac import GradVac
from keras_mtl.src.aggregators.imtl_g import IMTLG
from keras_mtl.src.aggregators.imtl_l import IMTLL
from keras_mtl.src.aggregators.krum import Krum
from keras_mtl.src.aggregators.mean import Mean
from keras_mtl.src.aggregators.mgda import MGDA
from keras_mtl.src.aggregators.min_norm_solver import min_norm_weights
from keras_mtl.src.aggregators.moco import MoCo
from keras_mtl.src.aggregators.modo import MoDo
from keras_mtl.src.aggregators.moml import MOML
from keras_mtl.src.aggregators.nash_mtl import NashMTL
from keras_mtl.src.aggregators.pcd import PCD
from keras_mtl.src.aggregators.pcgrad import PCGrad
from keras_mtl.src.aggregators.penalty_boundary_intersection import PBI
from keras_mtl.src.aggregators.random_loss_weighting import RandomLossWeighting
from keras_mtl.src.aggregators.registry import ALL_AGGREGATORS
from keras_mtl.src.aggregators.registry import deserialize
from keras_mtl.src.aggregators.registry import get
from keras_mtl.src.aggregators.registry import serialize
from keras_mtl.src.aggregators.scale_invariant import ScaleInvariant
from keras_mtl.src.aggregators.sdmgrad import SDMGrad
from keras_mtl.src.aggregators.stch import STCH
from keras_mtl.src.aggregators.sum import Sum
from keras_mtl.src.aggregators.trimmed_mean import TrimmedMean
from keras_mtl.src.aggregators.uncertainty_weighting import UncertaintyWeighting
from keras_mtl.src.aggregators.upgrad import UPGrad
