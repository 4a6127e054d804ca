"""DETR's panoptic mask head (``MODEL.DETR.MASK_HEAD "detr"``): per-query multi-head attention
maps over the encoder memory, then an FPN-like conv head that upsamples them with backbone
features to 1/4 resolution. Its cost grows with the number of queries."""

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .build import register_mask_head

__all__ = ["DetrMaskHead", "MHAttentionMap", "MaskHeadSmallConv"]


def _group_norm(channels, groups=8):
    # DETR uses 8 groups; smaller widths (tiny models) fall back to a divisor of the channels
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class MHAttentionMap(nn.Module):
    """
    Attention weights of each query over the memory, per head. As in DETR, the softmax runs jointly
    over heads and positions of a query, and padded positions get zero weight.

    With ``rescale`` the weights are multiplied by H * W (mean 1 / num_heads instead of
    1 / (num_heads * H * W)). DETR's maps are ~1e-3 beside O(1) features in the mask head's first
    conv + GroupNorm: trained from scratch, their gradient is ~1e-5 and every query gets the same
    mask. No parameter changes, so official checkpoints load either way (official configs: off).
    """

    def __init__(self, query_dim, hidden_dim, num_heads, rescale=False):
        super().__init__()
        self.num_heads = num_heads
        self.rescale = rescale
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        self.scale = float(hidden_dim / num_heads) ** -0.5
        for lin in (self.q_linear, self.k_linear):
            nn.init.zeros_(lin.bias)
            nn.init.xavier_uniform_(lin.weight)

    def forward(self, q, k, mask=None):
        """
        Args:
            q: (B, N, C) query features; k: (B, C, H, W) memory; mask: (B, H, W) True on padding.
        Returns:
            (B, N, num_heads, H, W) attention weights.
        """
        b, n, _ = q.shape
        h, w = k.shape[-2:]
        q = self.q_linear(q).view(b, n, self.num_heads, -1)
        k = F.conv2d(k, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        k = k.view(b, self.num_heads, -1, h, w)
        weights = torch.einsum("bqnc,bnchw->bqnhw", q * self.scale, k)
        if mask is not None:
            weights = weights.masked_fill(mask[:, None, None], float("-inf"))
        weights = weights.flatten(2).softmax(-1).view(b, n, self.num_heads, h, w)
        return weights * (h * w) if self.rescale else weights


class MaskHeadSmallConv(nn.Module):
    """
    Conv head turning (features, attention maps) of each query into mask logits at the resolution
    of the finest FPN input. Widths: ``dim`` = hidden_dim + num_heads, then context_dim / 2, /4,
    /8, /16 (as in DETR); FPN inputs of any width are adapted with 1x1 convs.
    """

    def __init__(self, dim, fpn_dims, context_dim):
        super().__init__()
        widths = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = _group_norm(dim)
        self.lay2 = nn.Conv2d(dim, widths[1], 3, padding=1)
        self.gn2 = _group_norm(widths[1])
        self.lay3 = nn.Conv2d(widths[1], widths[2], 3, padding=1)
        self.gn3 = _group_norm(widths[2])
        self.lay4 = nn.Conv2d(widths[2], widths[3], 3, padding=1)
        self.gn4 = _group_norm(widths[3])
        self.lay5 = nn.Conv2d(widths[3], widths[4], 3, padding=1)
        self.gn5 = _group_norm(widths[4])
        self.out_lay = nn.Conv2d(widths[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], widths[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], widths[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], widths[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def fpn_stages(self, fpns):
        """(adapter, conv, norm, feature) of the three upsampling stages, coarse to fine."""
        return zip(
            (self.adapter1, self.adapter2, self.adapter3),
            (self.lay3, self.lay4, self.lay5),
            (self.gn3, self.gn4, self.gn5),
            fpns,
        )

    def forward(self, x, attn, fpns):
        """
        Args:
            x: (B, C, H, W) projected features at the attention-map resolution.
            attn: (B, N, num_heads, H, W) attention maps of N queries.
            fpns: three (B, C_i, H_i, W_i) backbone features, coarse to fine (res4, res3, res2).
        Returns:
            (B, N, H_3, W_3) mask logits at the finest FPN resolution.
        """
        b, n = attn.shape[:2]

        def per_query(t):  # (B, C, h, w) -> (B*N, C, h, w)
            return t.unsqueeze(1).expand(-1, n, -1, -1, -1).flatten(0, 1)

        x = torch.cat([per_query(x), attn.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for adapter, lay, gn, fpn in self.fpn_stages(fpns):
            f = adapter(fpn)
            x = per_query(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        x = self.out_lay(x)
        return x.view(b, n, *x.shape[-2:])


@register_mask_head("detr")
class DetrMaskHead(nn.Module):
    """
    DETR's head: ``bbox_attention`` (MHAttentionMap) then ``mask_head`` (MaskHeadSmallConv) on
    res4, res3, res2. Masks of the last decoder layer only (a per-layer tower would be too dear).
    """

    all_queries_cheap = False

    @configurable
    def __init__(self, *, hidden_dim, num_heads, fpn_dims, attention_rescale=False):
        """
        Args:
            hidden_dim: transformer width C; num_heads: its attention heads.
            fpn_dims: channels of res4, res3, res2.
            attention_rescale: see :class:`MHAttentionMap` (a from-scratch training aid).
        """
        super().__init__()
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, num_heads, attention_rescale)
        self.mask_head = MaskHeadSmallConv(hidden_dim + num_heads, fpn_dims, hidden_dim)

    @classmethod
    def from_config(cls, cfg, input_shape):
        d = cfg.MODEL.DETR
        return {
            "hidden_dim": d.HIDDEN_DIM,
            "num_heads": d.NHEADS,
            "fpn_dims": [input_shape[f].channels for f in ("res4", "res3", "res2")],
            "attention_rescale": d.TRAINING_AIDS.ATTENTION_RESCALE,
        }

    def forward(self, hs, memory, memory_mask, src, features):
        """hs (B, N, C) -> (B, N, H/4, W/4) mask logits (see ``mask_heads`` for the arguments)."""
        if hs.dim() != 3:
            raise ValueError("MODEL.DETR.MASK_HEAD detr predicts masks of one decoder layer")
        attn = self.bbox_attention(hs, memory, memory_mask)
        return self.mask_head(src, attn, [features["res4"], features["res3"], features["res2"]])
