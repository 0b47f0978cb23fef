"""Datasets (COCO panoptic / instances, semantic), augmentation, synthetic data, checks.

Every dataset yields the same sample dict (see ``ecom2f.data.sample``); build one
with :func:`build_dataset` from a registered name or a spec dict.
"""

from ecom2f.data.base import SegmentationDataset
from ecom2f.data.check import CheckReport, check_dataset
from ecom2f.data.collate import collate_samples
from ecom2f.data.metadata import Category, DatasetMetadata
from ecom2f.data.problems import DataProblemError, Problem, ProblemKind, TooManyBadSamplesError
from ecom2f.data.registry import build_dataset, data_root, register_dataset, registered_datasets
from ecom2f.data.sample import training_targets
from ecom2f.data.transforms import build_transform, cityscapes_train, coco_lsj, inference_resize, restore_original_size

__all__ = [
    "Category",
    "CheckReport",
    "DataProblemError",
    "DatasetMetadata",
    "Problem",
    "ProblemKind",
    "SegmentationDataset",
    "TooManyBadSamplesError",
    "build_dataset",
    "build_transform",
    "check_dataset",
    "cityscapes_train",
    "coco_lsj",
    "collate_samples",
    "data_root",
    "inference_resize",
    "register_dataset",
    "registered_datasets",
    "restore_original_size",
    "training_targets",
]
