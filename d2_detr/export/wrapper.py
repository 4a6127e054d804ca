"""The exported graph: a tensor-in / tensor-out module around ``DETR.forward_raw``.

Input: the image as the model's ``preprocess_image`` receives it, (B, 3, H, W) float32 pixel
values 0-255 in ``INPUT.FORMAT`` channel order, already resized to the test size (B images of one
size). Normalisation, padding to ``size_divisibility`` and the padding mask are part of the
graph and follow the input's height and width (any size, multiples of 32 or not): the padding
amounts, the mask and the sine position embedding are computed from the input's shape, never
frozen at the size used for tracing.

Outputs: ``pred_logits`` (B, Q, K+1), ``pred_boxes`` (B, Q, 4) normalised cxcywh of the unpadded
image, and with a mask head ``pred_masks`` (B, Q, Hp/4, Wp/4) mask logits of ALL queries on the
padded canvas (Hp, Wp) = (H, W) rounded up to ``size_divisibility``. The post-processing stays in
Python: :func:`d2_detr.modeling.inference.image_outputs`, shared with the PyTorch model.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RawInference", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("pred_logits", "pred_boxes", "pred_masks")


class RawInference(nn.Module):
    """``model.forward_raw`` with the model's normalisation and padding, for tracing."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.size_divisibility = int(model.size_divisibility)
        self.output_names = OUTPUT_NAMES if model.mask_on else OUTPUT_NAMES[:2]

    def forward(self, image):
        """(B, 3, H, W) float pixels -> tuple of the ``output_names`` tensors (see module)."""
        m = self.model
        d = self.size_divisibility
        h, w = image.shape[-2], image.shape[-1]
        x = (image - m.pixel_mean) / m.pixel_std
        # pad right / bottom to a multiple of d with zeros after normalisation, as ImageList does;
        # sizes stay tensors while tracing (Shape ops in ONNX), so every input size is exact
        pad_h = (d - h % d) % d
        pad_w = (d - w % d) % d
        x = F.pad(x, [0, pad_w, 0, pad_h])
        rows = torch.arange(x.shape[-2], device=x.device) >= h
        cols = torch.arange(x.shape[-1], device=x.device) >= w
        mask = (rows[:, None] | cols[None, :])[None].expand(x.shape[0], -1, -1)
        out = m.forward_raw(x, mask)
        return tuple(out[k] for k in self.output_names)
