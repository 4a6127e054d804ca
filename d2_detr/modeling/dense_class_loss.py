"""Optional dense class supervision of the encoder memory and/or backbone levels (a training
aid, off by default).

DETR's set loss reaches the encoder only through the few queries matched to objects. Trained
from scratch on a small dataset, the encoder then learns slowly which positions belong to
which class, and the decoder has nothing discriminative to attend to. These heads classify
every position of the memory (and of chosen backbone levels, e.g. res3 at stride 8 where thin
cracks are still visible) against the class fractions of the pixels it covers (taken from the
panoptic target masks), which gives every position a gradient from the first iteration. They
are 1x1 convs used only for the loss: predictions and official checkpoints do not depend on
them.
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
    Per-position soft cross-entropy between a 1x1 conv on each input map and the class
    fractions of the covered pixels, averaged over positions that cover labelled pixels, then
    over the maps.
    """

    def __init__(self, in_channels, num_classes):
        """
        Args:
            in_channels: dict name -> channels of the maps to supervise.
            num_classes: K.
        """
        super().__init__()
        self.num_classes = num_classes
        self.classifiers = nn.ModuleDict(
            {name: nn.Conv2d(c, num_classes, kernel_size=1) for name, c in in_channels.items()}
        )

    def forward(self, features, targets):
        """
        Args:
            features: dict name -> (B, C, h, w) maps, with every name given at construction.
            targets: as for :func:`class_fractions`.
        Returns:
            scalar loss.
        """
        losses = [self._one(self.classifiers[k], features[k], targets) for k in self.classifiers]
        return sum(losses) / len(losses)

    def _one(self, classifier, x, targets):
        logits = classifier(x).float()
        fractions = class_fractions(targets, self.num_classes, x.shape[-2:])
        total = fractions.sum(1)  # (B, h, w)
        labelled = total > 0
        if not labelled.any():
            return logits.sum() * 0.0
        dist = fractions / total.clamp(min=1e-6)[:, None]
        nll = -(dist * F.log_softmax(logits, dim=1)).sum(1)
        return nll[labelled].mean()
