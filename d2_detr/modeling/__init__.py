"""DETR panoptic model: importing this package registers the ``DETR`` meta-architecture."""

from .backbone import build_detr_backbone
from .criterion import SetCriterion
from .detr import DETR
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer

__all__ = [
    "DETR",
    "HungarianMatcher",
    "PositionEmbeddingSine",
    "SetCriterion",
    "Transformer",
    "build_detr_backbone",
]
