"""Frozen ImageNet teachers with a common feature interface."""

from medad.backbones.base import FeatureStage, MissingWeightsError, Teacher
from medad.backbones.registry import DEFAULT_TEACHER, available_teachers, build_teacher

__all__ = ["FeatureStage", "MissingWeightsError", "Teacher", "DEFAULT_TEACHER", "available_teachers", "build_teacher"]
