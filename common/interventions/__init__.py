"""Interventions: one protocol for every way of changing the model during generation (common/interventions/base.py).

Importing the package registers every kind, so `load_interventions` can rebuild any saved one."""

from common.interventions.adapters import LowRankAdapter, SVDRotationAdapter
from common.interventions.base import (REGISTRY, DecodeAppliers, Intervention, kind_class, load_interventions,
                                       register, save_interventions)
from common.interventions.kv_cache import KVCacheEdit
from common.interventions.residual import POSITION_POLICIES, ResidualAddition, residual_added
from common.interventions.self_steering import SelfSteering

__all__ = ["REGISTRY", "DecodeAppliers", "Intervention", "KVCacheEdit", "LowRankAdapter", "POSITION_POLICIES",
           "ResidualAddition", "SVDRotationAdapter", "SelfSteering", "kind_class", "load_interventions", "register",
           "residual_added", "save_interventions"]
