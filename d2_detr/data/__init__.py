"""Data: COCO-panoptic format helpers, the concrete-defect converter, validator and synthetic
generator, and Detectron2 catalog registration (run on import)."""

from . import dataset_mappers  # noqa: F401
from . import datasets  # noqa: F401  (registers the datasets)
