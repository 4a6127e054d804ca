"""
Mask heads of DETR, one module each, behind one interface (``MODEL.DETR.MASK_HEAD`` names one):

    head(hs, memory, memory_mask, src, features) -> mask logits (..., B, N, H/4, W/4)

with ``hs`` (..., B, N, C) decoder outputs of N queries (a leading decoder-layer dimension is
allowed when ``head.all_queries_cheap``), ``memory`` (B, C, h, w) the encoder output,
``memory_mask`` (B, h, w) True on padding, ``src`` (B, C, h, w) the projected transformer input
and ``features`` the backbone's dict of maps.

``all_queries_cheap`` tells the meta-architecture whether masks of every query (and decoder
layer) cost about as much as one query's (dot-product head), or grow with the number of queries
(DETR's per-query conv head: only matched / kept queries get masks).

A head's sub-modules are adopted by the meta-architecture under their own names, so its
parameters keep official DETR checkpoint names (``bbox_attention.*``, ``mask_head.*``).
"""

from .build import MASK_HEAD_REGISTRY, build_mask_head
from .detr_head import DetrMaskHead, MaskHeadSmallConv, MHAttentionMap
from .dot_product import DotProductMaskHead, PixelDecoder, dot_product_masks

__all__ = [
    "MASK_HEAD_REGISTRY",
    "build_mask_head",
    "DetrMaskHead",
    "DotProductMaskHead",
    "MHAttentionMap",
    "MaskHeadSmallConv",
    "PixelDecoder",
    "dot_product_masks",
]
