"""DETR's mask head with its first convolution split, for the exported copy of a model.

:class:`~d2_detr.modeling.mask_heads.MaskHeadSmallConv` concatenates, for each of the N queries,
the image's projected features (C channels, the same for every query) with that query's
attention maps (M channels), then runs ``lay1`` (3x3, C + M -> C + M) on the N stacked inputs.
A convolution is linear in its input channels (zero padding included), so

    lay1(cat(x, a_q)) = conv(x, W[:, :C]) + bias + conv(a_q, W[:, C:])

and the first term is computed once per image instead of once per query: for DETR-R50 (C 256,
M 8, 20 queries at 800x1066) about 20 of the model's ~224 GFLOP. Likewise each later layer
``lay(up(y_q) + f)`` (``f`` the adapted backbone feature, the same for every query) becomes
``lay(up(y_q)) + conv(f)``: ``f``'s convolution runs once, and the per-query sum is taken on the
conv's output (half the channels of its input). Same result up to float rounding (sums taken
in another order).
"""

import torch.nn.functional as F
from torch import nn

from ..modeling.mask_heads import MaskHeadSmallConv

__all__ = ["SharedFeatureMaskHead", "split_mask_head_convs"]


class SharedFeatureMaskHead(nn.Module):
    """``head``'s computation (a :class:`MaskHeadSmallConv`) with the per-image parts of its
    convolutions computed once (see the module); the same arguments and outputs as
    ``head.forward``."""

    def __init__(self, head):
        super().__init__()
        if type(head) is not MaskHeadSmallConv:
            raise TypeError(f"expected a MaskHeadSmallConv, got {type(head).__name__}")
        self.head = head

    def forward(self, x, attn, fpns):
        """x: (B, C, H, W); attn: (B, N, M, H, W); fpns: res4, res3, res2 -> (B, N, H3, W3)."""
        h = self.head
        b, n = attn.shape[:2]
        c = x.shape[1]
        lay1 = h.lay1
        shared = F.conv2d(x, lay1.weight[:, :c], lay1.bias, lay1.stride, lay1.padding)
        own = F.conv2d(attn.flatten(0, 1), lay1.weight[:, c:], None, lay1.stride, lay1.padding)
        y = own.unflatten(0, (b, n)) + shared[:, None]
        y = F.relu(h.gn1(y.flatten(0, 1)))
        y = F.relu(h.gn2(h.lay2(y)))
        for adapter, lay, gn, fpn in h.fpn_stages(fpns):
            f = adapter(fpn)
            # lay(up(y) + f) = lay(up(y)) + lay without bias(f): f's part once per image, added
            # to the (narrower) conv output instead of the input
            f = F.conv2d(f, lay.weight, None, lay.stride, lay.padding)
            y = lay(F.interpolate(y, size=fpn.shape[-2:], mode="nearest"))
            y = (y.unflatten(0, (b, n)) + f[:, None]).flatten(0, 1)
            y = F.relu(gn(y))
        y = h.out_lay(y)
        return y.view(b, n, *y.shape[-2:])


def split_mask_head_convs(model):
    """
    Replace, in place, every :class:`MaskHeadSmallConv` child of ``model`` (and of the unregistered
    ``model.mask_predictor`` through which :class:`~d2_detr.modeling.DETR` runs its head) by a
    :class:`SharedFeatureMaskHead` around it. Returns the number of heads replaced.
    """
    parents = list(model.modules())
    predictor = getattr(model, "mask_predictor", None)
    if isinstance(predictor, nn.Module):
        parents += list(predictor.modules())
    replaced = {}
    for parent in parents:
        for name, child in list(parent._modules.items()):
            if type(child) is MaskHeadSmallConv:
                if id(child) not in replaced:
                    replaced[id(child)] = SharedFeatureMaskHead(child)
                parent._modules[name] = replaced[id(child)]
    return len(replaced)
