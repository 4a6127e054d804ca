"""Dataset mappers: Detectron2 dataset dict -> model input."""

from .detr_panoptic_dataset_mapper import DetrPanopticDatasetMapper

__all__ = ["DetrPanopticDatasetMapper"]
