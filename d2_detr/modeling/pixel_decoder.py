"""Per-pixel embeddings for dot-product masks (the mask prediction of MaskFormer, Cheng et al.
2021), an alternative to DETR's per-query conv mask head (``MODEL.DETR.MASK_HEAD``).

A small FPN runs once per image: the encoder memory, then top-down through the finer backbone
levels to stride 4. A query's mask logits are the dot product of its mask embedding with every
pixel's embedding, so the masks of all queries (and of every decoder layer) cost one matrix
product instead of one conv tower per query.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PixelDecoder", "dot_product_masks"]


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
