"""The DETR panoptic meta-architecture: wiring of backbone, transformer, class/box heads, mask
head, criterion and post-processing, in Detectron2's conventions."""

import logging

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds
from torch import nn

from .backbone import build_detr_backbone, downsample_mask
from .criterion import SetCriterion
from .dense_class_loss import DenseClassLoss
from .inference import InferenceSettings, image_outputs, queries_needing_masks
from .mask_heads import build_mask_head
from .mask_heads.dot_product import MLP
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .targets import instances_to_targets
from .transformer import Transformer

__all__ = ["DETR", "MASK_HEAD_PREFIXES"]

logger = logging.getLogger(__name__)

# parameter-name prefixes of the mask heads (DETR's head; the dot-product head)
MASK_HEAD_PREFIXES = ("bbox_attention.", "mask_head.", "pixel_decoder.", "mask_embed.")


def _put_scalars(**scalars):
    """Record metrics in the current EventStorage, if a trainer opened one."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalars(**scalars)


@META_ARCH_REGISTRY.register()
class DETR(nn.Module):
    """
    DETR with a panoptic mask head (Carion et al. 2020), as a Detectron2 meta-architecture.

    Training input: list of dicts with "image" (C, H, W) and "instances" (gt_boxes absolute xyxy,
    gt_classes contiguous, gt_masks BitMasks/PolygonMasks); returns a dict of losses.
    Inference returns per image {"panoptic_seg", "instances", "sem_seg"} (as switched on),
    at the original size ("height"/"width" of the input, else the image size). Inference runs
    image by image, each padded alone: an image's results do not depend on the other images of
    the batch, whatever the backbone's normalisation (GroupNorm statistics would see the padding
    of a batch). ``forward_raw`` is the tensor-only path for export.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        transformer,
        criterion,
        mask_head,
        num_classes,
        num_queries,
        pixel_mean,
        pixel_std,
        inference_settings,
        in_feature="res5",
        deep_supervision=True,
        freeze_detector=False,
        size_divisibility=32,
        dense_class_weight=0.0,
    ):
        """
        Args:
            mask_head: a module of ``mask_heads`` or None (detection only). Its sub-modules are
                registered here under their own names (official checkpoint keys).
            inference_settings: :class:`InferenceSettings`.
            dense_class_weight: weight of :class:`DenseClassLoss` on the encoder memory (0: off).
        """
        super().__init__()
        hidden = transformer.d_model
        shapes = backbone.output_shape()
        self.backbone = backbone
        self.in_feature = in_feature
        self.input_proj = nn.Conv2d(shapes[in_feature].channels, hidden, kernel_size=1)
        self.position_embedding = PositionEmbeddingSine(hidden // 2, normalize=True)
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)
        # the head's children become ours (state-dict keys "mask_head.*", not "x.mask_head.*");
        # the head object itself stays unregistered and runs on those same modules
        object.__setattr__(self, "mask_predictor", mask_head)
        if mask_head is not None:
            for name, child in mask_head.named_children():
                self.add_module(name, child)
        self.mask_on = mask_head is not None
        self.criterion = criterion
        if dense_class_weight > 0 and freeze_detector:
            logger.info("FREEZE_DETECTOR trains the mask head only: no dense class loss")
            dense_class_weight = 0.0
        self.dense_class_weight = dense_class_weight
        if dense_class_weight > 0:
            self.dense_class_loss = DenseClassLoss(hidden, num_classes)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.settings = inference_settings
        self.thing_ids = set(inference_settings.thing_ids)
        self.deep_supervision = deep_supervision
        self.freeze_detector = freeze_detector
        self.size_divisibility = max(size_divisibility, max(s.stride for s in shapes.values()))
        if inference_settings.masks_needed and not self.mask_on:
            raise ValueError("panoptic / semantic outputs need MODEL.DETR.MASK_ON")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if freeze_detector:
            if not self.mask_on:
                raise ValueError("MODEL.DETR.FREEZE_DETECTOR trains the mask head: needs MASK_ON")
            for name, p in self.named_parameters():
                if not name.startswith(MASK_HEAD_PREFIXES):
                    p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DETR
        backbone = build_detr_backbone(cfg)
        transformer = Transformer(
            d_model=d.HIDDEN_DIM,
            nhead=d.NHEADS,
            num_encoder_layers=d.ENC_LAYERS,
            num_decoder_layers=d.DEC_LAYERS,
            dim_feedforward=d.DIM_FEEDFORWARD,
            dropout=d.DROPOUT,
            normalize_before=d.PRE_NORM,
        )
        matcher = HungarianMatcher(
            cost_class=d.COST_CLASS,
            cost_bbox=d.COST_BBOX,
            cost_giou=d.COST_GIOU,
            cost_mask=d.COST_MASK if d.MASK_ON else 0.0,
            cost_dice=d.COST_DICE if d.MASK_ON else 0.0,
            num_points=d.MATCHER_NUM_POINTS,
        )
        weight_dict = {
            "loss_ce": d.CLASS_WEIGHT,
            "loss_bbox": d.L1_WEIGHT,
            "loss_giou": d.GIOU_WEIGHT,
            "loss_mask": d.MASK_WEIGHT,
            "loss_dice": d.DICE_WEIGHT,
        }
        if d.FREEZE_DETECTOR:
            losses = ["masks"]
        else:
            losses = ["labels", "boxes"] + (["masks"] if d.MASK_ON else [])
        criterion = SetCriterion(d.NUM_CLASSES, matcher, weight_dict, d.NO_OBJECT_WEIGHT, losses)
        return {
            "backbone": backbone,
            "transformer": transformer,
            "criterion": criterion,
            "mask_head": build_mask_head(cfg, backbone.output_shape()) if d.MASK_ON else None,
            "num_classes": d.NUM_CLASSES,
            "num_queries": d.NUM_OBJECT_QUERIES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "inference_settings": InferenceSettings.from_config(cfg),
            "in_feature": d.IN_FEATURE,
            "deep_supervision": d.DEEP_SUPERVISION,
            "freeze_detector": d.FREEZE_DETECTOR,
            "size_divisibility": d.SIZE_DIVISIBILITY,
            "dense_class_weight": d.TRAINING_AIDS.DENSE_CLASS_WEIGHT,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def train(self, mode=True):
        super().train(mode)
        if self.mask_predictor is not None:
            self.mask_predictor.training = mode
        return self

    # -- tensor paths ---------------------------------------------------------------------------
    def detect(self, images, padding_mask):
        """
        Backbone + transformer + class/box heads on a normalised (B, 3, H, W) batch.

        Returns:
            dict with "pred_logits" (L, B, Q, K+1) and "pred_boxes" (L, B, Q, 4) normalised
            cxcywh for each of the L decoder layers, "hs" (L, B, Q, C), "memory" (B, C, h, w),
            "src" (projected ``in_feature``), "mask" (its padding, (B, h, w)), "features".
        """
        features = self.backbone(images)
        top = features[self.in_feature]
        top_mask = downsample_mask(padding_mask, top.shape[-2:])
        src = self.input_proj(top)
        pos = self.position_embedding(top_mask).to(src.dtype)
        hs, memory = self.transformer(src, top_mask, self.query_embed.weight, pos)
        return {
            "pred_logits": self.class_embed(hs),
            "pred_boxes": self.bbox_embed(hs).sigmoid(),
            "hs": hs,
            "memory": memory,
            "src": src,
            "mask": top_mask,
            "features": features,
        }

    def predict_masks(self, det, hs):
        """Mask logits (..., B, N, H/4, W/4) of the decoder outputs ``hs`` (..., B, N, C)."""
        return self.mask_predictor(hs, det["memory"], det["mask"], det["src"], det["features"])

    def forward_raw(self, images, padding_mask=None):
        """
        Tracing-friendly inference (no data-dependent Python control flow), for export.

        Args:
            images: (B, 3, H, W) already normalised ((x - PIXEL_MEAN) / PIXEL_STD), H and W
                multiples of ``size_divisibility``.
            padding_mask: (B, H, W) bool, True on padding; None: no padding.
        Returns:
            dict with "pred_logits" (B, Q, K+1), "pred_boxes" (B, Q, 4) normalised cxcywh of the
            unpadded image and, with masks, "pred_masks" (B, Q, H/4, W/4) logits of ALL queries.
            ``inference.image_outputs`` turns one image's slice of it into the model's results.
        """
        if padding_mask is None:
            padding_mask = torch.zeros_like(images[:, 0], dtype=torch.bool)
        det = self.detect(images, padding_mask)
        out = {"pred_logits": det["pred_logits"][-1], "pred_boxes": det["pred_boxes"][-1]}
        if self.mask_on:
            out["pred_masks"] = self.predict_masks(det, det["hs"][-1])
        return out

    # -- Detectron2 interface -------------------------------------------------------------------
    def preprocess_image(self, batched_inputs):
        """Normalise and pad; returns the ImageList and the (B, H, W) padding mask (True = pad)."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = ImageList.from_tensors(images, self.size_divisibility)
        b, _, h, w = images.tensor.shape
        mask = torch.ones((b, h, w), dtype=torch.bool, device=self.device)
        for i, (ih, iw) in enumerate(images.image_sizes):
            mask[i, :ih, :iw] = False
        return images, mask

    def forward(self, batched_inputs):
        if not self.training:
            return [self.inference_one(x) for x in batched_inputs]
        images, mask = self.preprocess_image(batched_inputs)
        det = self.detect(images.tensor, mask)
        outputs = self.set_outputs(det)
        for x in batched_inputs:
            if "instances" not in x:
                raise ValueError("DETR training needs 'instances' in every input dict")
        targets, dropped = instances_to_targets(
            [x["instances"].to(self.device) for x in batched_inputs],
            images.image_sizes,
            images.tensor.shape[-2:],
            self.num_classes,
            with_masks=self.mask_on or self.dense_class_weight > 0,
        )
        self._record_dropped(dropped)
        losses, metrics = self.criterion(outputs, targets)
        if self.dense_class_weight > 0:
            losses["loss_dense_class"] = self.dense_class_weight * self.dense_class_loss(
                det["memory"], targets
            )
        _put_scalars(**metrics)
        return losses

    def set_outputs(self, det):
        """The criterion's input: last layer's outputs, earlier layers' in "aux_outputs", masks
        for every layer (cheap heads), for the last layer (mask matching costs), or a function
        computing only the matched queries' masks."""
        logits, boxes = det["pred_logits"], det["pred_boxes"]
        outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        layers = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        if self.deep_supervision:
            outputs["aux_outputs"] = layers
        if not self.mask_on:
            return outputs
        if self.mask_predictor.all_queries_cheap:
            masks = self.predict_masks(det, det["hs"])
            outputs["pred_masks"] = masks[-1]
            for aux, aux_masks in zip(outputs.get("aux_outputs", []), masks[:-1]):
                aux["pred_masks"] = aux_masks
        elif self.criterion.matcher.uses_masks:
            outputs["pred_masks"] = self.predict_masks(det, det["hs"][-1])
        else:
            outputs["mask_predictor"] = lambda b, q: self.predict_matched_masks(det, b, q)
        return outputs

    def predict_matched_masks(self, det, batch_idx, query_idx):
        """(M, H/4, W/4) mask logits of queries ``query_idx[k]`` of images ``batch_idx[k]``
        (last decoder layer); equal to ``predict_masks(det, det["hs"][-1])[batch_idx, query_idx]``
        at the cost of the M masks only."""
        parts, order = [], []
        for b in batch_idx.unique().tolist():
            sel = (batch_idx == b).nonzero().flatten()
            one = {
                "memory": det["memory"][b : b + 1],
                "mask": det["mask"][b : b + 1],
                "src": det["src"][b : b + 1],
                "features": {k: v[b : b + 1] for k, v in det["features"].items()},
            }
            parts.append(self.predict_masks(one, det["hs"][-1][b : b + 1, query_idx[sel]])[0])
            order.append(sel)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]

    def _record_dropped(self, dropped):
        _put_scalars(dropped_targets=dropped)
        if dropped:
            log_every_n_seconds(
                logging.WARNING,
                f"DETR: dropped {dropped} targets with empty masks or degenerate boxes",
                n=60,
                name=__name__,
            )

    @torch.no_grad()
    def inference_one(self, x):
        """One input dict -> its result dict. The image is padded alone, and the mask head runs
        only for the queries an output needs."""
        images, mask = self.preprocess_image([x])
        det = self.detect(images.tensor, mask)
        logits, boxes = det["pred_logits"][-1, 0], det["pred_boxes"][-1, 0]
        needed = queries_needing_masks(logits, self.settings, self.mask_on)
        masks = None
        if self.mask_on:
            if len(needed):
                masks = self.predict_masks(det, det["hs"][-1][:, needed])[0]
            else:
                masks = det["memory"].new_zeros((0, 1, 1))
        image_size = images.image_sizes[0]
        output_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
        return image_outputs(
            logits,
            boxes,
            masks,
            self.settings,
            tuple(images.tensor.shape[-2:]),
            image_size,
            output_size,
            query_index=needed,
        )
