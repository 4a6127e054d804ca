"""Per-pixel embeddings for dot-product masks (the mask prediction of MaskFormer, Cheng et al.
2021), an alternative to DETR's per-query conv mask head (``MODEL.DETR.MASK_HEAD
"dot_product"``, width ``MODEL.DETR.DOT_PRODUCT.MASK_DIM``).

A small FPN runs once per image: the encoder memory, then top-down through the finer backbone
levels to stride 4. A query's mask logits are the dot product of its mask embedding with every
pixel's embedding, so the masks of all queries (and of every decoder layer) cost one matrix
product instead of one conv tower per query.
"""

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .build import register_mask_head

__all__ = ["DotProductMaskHead", "MLP", "PixelDecoder", "dot_product_masks"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box head; the mask embedding)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _conv_gn_relu(in_channels, out_channels, kernel_size):
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    norm = nn.GroupNorm(math.gcd(32, out_channels), out_channels)
    return nn.Sequential(conv, norm, nn.ReLU(inplace=True))


class PixelDecoder(nn.Module):
    """
    FPN from the transformer's memory down to the finest backbone level.

    Args:
        memory_dim: channels of the encoder memory.
        lateral_dims: channels of the backbone levels to merge, coarse to fine (e.g. res3, res2).
        conv_dim: width of the FPN.
        mask_dim: channels of the output embeddings.
    """

    def __init__(self, memory_dim, lateral_dims, conv_dim, mask_dim):
        super().__init__()
        self.top = _conv_gn_relu(memory_dim, conv_dim, 1)
        self.laterals = nn.ModuleList(_conv_gn_relu(c, conv_dim, 1) for c in lateral_dims)
        self.outputs = nn.ModuleList(_conv_gn_relu(conv_dim, conv_dim, 3) for _ in lateral_dims)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)

    def forward(self, memory, laterals):
        """
        Args:
            memory: (B, C, h, w) encoder output.
            laterals: backbone features (B, C_i, H_i, W_i), coarse to fine.
        Returns:
            (B, mask_dim, H, W) per-pixel embeddings at the finest lateral's resolution.
        """
        x = self.top(memory)
        for lateral, output, feature in zip(self.laterals, self.outputs, laterals):
            x = lateral(feature) + F.interpolate(x, size=feature.shape[-2:], mode="nearest")
            x = output(x)
        return self.mask_features(x)


def dot_product_masks(mask_embeddings, pixel_embeddings):
    """(..., B, N, D) query mask embeddings, (B, D, H, W) pixel embeddings -> (..., B, N, H, W)
    mask logits."""
    return torch.einsum("...bnd,bdhw->...bnhw", mask_embeddings, pixel_embeddings)


def finer_levels(input_shape, in_feature):
    """Backbone levels ("res*") finer than ``in_feature``, coarse to fine."""
    top_stride = input_shape[in_feature].stride
    return sorted(
        (k for k in input_shape if k.startswith("res") and input_shape[k].stride < top_stride),
        key=lambda k: -input_shape[k].stride,
    )


@register_mask_head("dot_product")
class DotProductMaskHead(nn.Module):
    """
    ``pixel_decoder`` (memory + backbone levels finer than the transformer's input) gives
    per-pixel embeddings once per image; ``mask_embed`` (3-layer MLP) one embedding per query;
    masks are their dot products, for any number of queries and decoder layers at once.
    """

    all_queries_cheap = True

    @configurable
    def __init__(self, *, hidden_dim, lateral_dims, pixel_levels, mask_dim):
        """
        Args:
            hidden_dim: transformer width C.
            lateral_dims: channels of the backbone levels ``pixel_levels`` (coarse to fine).
            mask_dim: width of the pixel decoder and of the embeddings.
        """
        super().__init__()
        self.pixel_levels = list(pixel_levels)
        self.pixel_decoder = PixelDecoder(hidden_dim, lateral_dims, mask_dim, mask_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, input_shape):
        levels = finer_levels(input_shape, cfg.MODEL.DETR.IN_FEATURE)
        return {
            "hidden_dim": cfg.MODEL.DETR.HIDDEN_DIM,
            "lateral_dims": [input_shape[k].channels for k in levels],
            "pixel_levels": levels,
            "mask_dim": cfg.MODEL.DETR.DOT_PRODUCT.MASK_DIM,
        }

    def forward(self, hs, memory, memory_mask, src, features):
        """hs (..., B, N, C) -> (..., B, N, H/4, W/4) mask logits."""
        pixels = self.pixel_decoder(memory, [features[k] for k in self.pixel_levels])
        return dot_product_masks(self.mask_embed(hs), pixels)
