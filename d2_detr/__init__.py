"""d2-detr: DETR panoptic segmentation as a Detectron2 extension.

Importing the package first applies :mod:`d2_detr.compat` (fallbacks for what today's stack
lacks), then exposes the config function.
"""

from . import compat  # noqa: F401  (must run before torchvision / detectron2 are imported)
from .config import add_detr_config  # noqa: E402
from . import data  # noqa: F401,E402
from . import modeling  # noqa: F401,E402

__all__ = ["add_detr_config"]
