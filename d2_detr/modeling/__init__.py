"""DETR panoptic model: importing this package registers the ``DETR`` meta-architecture."""

from .backbone import build_detr_backbone
from .criterion import SetCriterion
from .detr import DETR
from .mask_heads import MASK_HEAD_REGISTRY, build_mask_head
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer

__all__ = [
    "DETR",
    "MASK_HEAD_REGISTRY",
    "HungarianMatcher",
    "PositionEmbeddingSine",
    "SetCriterion",
    "Transformer",
    "build_detr_backbone",
    "build_mask_head",
]
