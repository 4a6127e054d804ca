"""Optional dense class supervision of the encoder memory (a from-scratch training aid, off by
default: ``MODEL.DETR.TRAINING_AIDS.DENSE_CLASS_WEIGHT``).

DETR's set loss reaches the encoder only through the few queries matched to objects. Trained
from scratch on a small dataset, the encoder then learns slowly which positions belong to
which class, and the decoder has nothing discriminative to attend to. This head classifies
every position of the memory against the class fractions of the pixels it covers (taken from the
panoptic target masks), which gives every position a gradient from the first iteration. It is a
1x1 conv used only for the loss: predictions and official checkpoints do not depend on it.
(Supervising backbone levels as well was measured not to help and was removed.)
"""

import torch
import torch.nn.functional as F
from torch import nn


def class_fractions(targets, num_classes, size):
    """
    Fraction of each (h, w) cell's pixels that belongs to each class.

    Args:
        targets: list of B dicts with "labels" (N,) and "masks" (N, H, W) bool, padded to the
            batch's size.
        num_classes: K.
        size: (h, w) of the feature map; H, W must be multiples of h, w.
    Returns:
        (B, K, h, w) float fractions; cells with no labelled pixel (padding, unlabelled) sum to 0.
    """
    out = []
    for t in targets:
        masks, labels = t["masks"], t["labels"]
        H, W = masks.shape[-2:]
        onehot = masks.new_zeros((num_classes, H, W), dtype=torch.float32)
        if len(labels):
            # overlapping segments of one class count once; panoptic segments do not overlap
            onehot.index_reduce_(0, labels, masks.float(), "amax", include_self=True)
        out.append(F.adaptive_avg_pool2d(onehot[None], size)[0])
    return torch.stack(out)


class DenseClassLoss(nn.Module):
    """
    Per-position soft cross-entropy between a 1x1 conv on the encoder memory and the class
    fractions of the pixels each position covers, averaged over positions that cover labelled
    pixels.
    """

    def __init__(self, in_channels, num_classes):
        """
        Args:
            in_channels: channels of the memory (transformer width).
            num_classes: K.
        """
        super().__init__()
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, memory, targets):
        """
        Args:
            memory: (B, C, h, w) encoder output.
            targets: as for :func:`class_fractions`.
        Returns:
            scalar loss.
        """
        logits = self.classifier(memory).float()
        fractions = class_fractions(targets, self.num_classes, memory.shape[-2:])
        total = fractions.sum(1)  # (B, h, w)
        labelled = total > 0
        if not labelled.any():
            return logits.sum() * 0.0
        dist = fractions / total.clamp(min=1e-6)[:, None]
        nll = -(dist * F.log_softmax(logits, dim=1)).sum(1)
        return nll[labelled].mean()
