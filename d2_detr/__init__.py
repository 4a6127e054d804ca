"""d2-detr: DETR panoptic segmentation as a Detectron2 extension.

Importing the package first applies :mod:`d2_detr.compat` (fallbacks for what today's stack
lacks), then registers the DETR meta-architecture and the datasets, and exposes the config
function.
"""

from . import compat  # noqa: F401  (must run before torchvision / detectron2 are imported)

# isort: split
from . import data  # noqa: F401  (registers datasets and the dataset mapper)
from . import modeling  # noqa: F401  (registers the DETR meta-architecture)
from .config import add_detr_config

__all__ = ["add_detr_config"]
