"""Sine positional encoding of a feature map, aware of the padding mask (DETR flavour)."""

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """
    Fixed 2D sine/cosine encoding of (y, x) pixel positions.

    Positions are cumulative counts of valid (non-padded) pixels; with ``normalize`` they are
    divided by the valid extent of each image and scaled to ``[0, scale]``, so the encoding of an
    image does not depend on how much padding the batch adds.
    """

    def __init__(self, num_pos_feats=128, temperature=10000, normalize=True, scale=2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask):
        """
        Args:
            mask: (B, H, W) bool, True on padded pixels.
        Returns:
            (B, 2 * num_pos_feats, H, W) float: y features first, then x features.
        """
        not_mask = (~mask).float()
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            x = x / (x[:, :, -1:] + eps) * self.scale
        idx = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (
            2 * torch.div(idx, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        # interleave sin (even channels) and cos (odd channels)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
