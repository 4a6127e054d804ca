"""Sine positional encoding of a feature map, aware of the padding mask (DETR flavour)."""

import math

import torch
from torch import nn


def sine_features(coord, num_feats, temperature=10000):
    """
    (...) coordinates -> (..., num_feats): sin of ``coord / temperature^(2i/num_feats)`` on even
    channels, cos on odd channels (DETR's interleaving).
    """
    idx = torch.arange(num_feats, dtype=torch.float32, device=coord.device)
    dim_t = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / num_feats)
    pos = coord[..., None] / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


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
        pos_y = sine_features(y, self.num_pos_feats, self.temperature)
        pos_x = sine_features(x, self.num_pos_feats, self.temperature)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
