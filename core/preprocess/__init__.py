"""Preprocessing of radiographs into one canonical form, with quality flags (plain numpy/OpenCV/PyTorch)."""

from core.preprocess.config import FLAGS, REGION_NAMES, PreprocessConfig
from core.preprocess.pipeline import (Preprocessor, PreprocessResult, preprocess_config_of, preprocessor_for,
                                      views_of)
from core.preprocess.pose import Pose, apply_pose, undo_pose

__all__ = ["FLAGS", "REGION_NAMES", "Pose", "PreprocessConfig", "PreprocessResult", "Preprocessor", "apply_pose",
           "preprocess_config_of", "preprocessor_for", "undo_pose", "views_of"]
