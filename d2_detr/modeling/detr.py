"""The DETR panoptic meta-architecture: glue between backbone, transformer, heads, criterion and
post-processing, in Detectron2's conventions."""

import functools
import logging
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks, ImageList, PolygonMasks
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds
from torch import nn
from torchvision.ops import box_convert

from .backbone import build_detr_backbone, downsample_mask
from .criterion import SetCriterion
from .dense_class_loss import DenseClassLoss
from .mask_head import MaskHeadSmallConv, MHAttentionMap
from .matcher import HungarianMatcher
from .pixel_decoder import PixelDecoder, dot_product_masks
from .position_encoding import PositionEmbeddingSine
from .postprocess import (
    class_scores,
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    select_panoptic_queries,
    semantic_inference,
    split_into_components,
)
from .transformer import Transformer

logger = logging.getLogger(__name__)

MASK_HEAD_PREFIXES = ("bbox_attention.", "mask_head.", "pixel_decoder.", "mask_embed.")
MASK_HEADS = ("detr", "dot_product")


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box head)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _put_scalars(**scalars):
    """Record metrics in the current EventStorage, if a trainer opened one."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalars(**scalars)


def dataset_classes(cfg):
    """
    Contiguous class ids that are things, and the number of classes, from the metadata of
    ``DATASETS.TEST[0]`` (or ``TRAIN[0]``); every listed dataset with metadata must agree with
    ``MODEL.DETR.NUM_CLASSES``. Without metadata, ``MODEL.DETR.THING_CLASSES`` is used (empty: all
    classes are things).
    """
    num_classes = cfg.MODEL.DETR.NUM_CLASSES
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    thing_ids = None
    for name in names:
        meta = MetadataCatalog.get(name)
        thing_map = meta.get("thing_dataset_id_to_contiguous_id")
        if thing_map is None:
            continue
        if meta.get("stuff_dataset_id_to_contiguous_id") is not None:
            found = len(meta.get("stuff_classes", []))  # panoptic: stuff_classes lists all
        else:
            found = len(meta.get("thing_classes", []))
        if found != num_classes:
            raise ValueError(
                f"MODEL.DETR.NUM_CLASSES is {num_classes} but dataset '{name}' has {found} "
                "classes (things + stuff in one contiguous id space): set MODEL.DETR.NUM_CLASSES "
                f"to {found}"
            )
        if thing_ids is None:
            thing_ids = set(thing_map.values())
    if thing_ids is None:
        thing_ids = set(cfg.MODEL.DETR.THING_CLASSES) or set(range(num_classes))
        logger.info(f"No dataset metadata found for {names}: thing classes {sorted(thing_ids)}")
    bad = [c for c in thing_ids if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"thing class ids {bad} are outside [0, {num_classes})")
    return thing_ids


@META_ARCH_REGISTRY.register()
class DETR(nn.Module):
    """
    DETR with the panoptic mask head (Carion et al. 2020), as a Detectron2 meta-architecture.

    Training input: list of dicts with "image" (C, H, W) and "instances" (gt_boxes absolute xyxy,
    gt_classes contiguous, gt_masks BitMasks/PolygonMasks); returns a dict of losses.
    Inference returns per image {"panoptic_seg", "instances", "sem_seg"} (as switched on),
    at the original size ("height"/"width" of the input, else the image size).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        transformer,
        criterion,
        num_classes,
        num_queries,
        pixel_mean,
        pixel_std,
        thing_ids,
        mask_on=True,
        mask_attention_rescale=False,
        mask_head="detr",
        mask_dim=256,
        dense_class_weight=0.0,
        dense_class_in_features=("memory",),
        in_feature="res5",
        deep_supervision=True,
        freeze_detector=False,
        size_divisibility=32,
        panoptic_on=True,
        instance_on=True,
        semantic_on=False,
        object_mask_threshold=0.85,
        overlap_threshold=0.8,
        min_segment_area=4,
        score_weighted_masks=False,
        split_components=False,
        component_priority=(),
        component_min_fraction=0.0,
    ):
        super().__init__()
        hidden, nheads = transformer.d_model, transformer.nhead
        shapes = backbone.output_shape()
        self.backbone = backbone
        self.in_feature = in_feature
        self.input_proj = nn.Conv2d(shapes[in_feature].channels, hidden, kernel_size=1)
        self.position_embedding = PositionEmbeddingSine(hidden // 2, normalize=True)
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)
        self.mask_on = mask_on
        if mask_head not in MASK_HEADS:
            raise ValueError(f"MODEL.DETR.MASK_HEAD {mask_head!r}: choose from {MASK_HEADS}")
        self.mask_head_type = mask_head
        if mask_on and mask_head == "detr":
            self.bbox_attention = MHAttentionMap(hidden, hidden, nheads, mask_attention_rescale)
            fpn_dims = [shapes[f].channels for f in ("res4", "res3", "res2")]
            self.mask_head = MaskHeadSmallConv(hidden + nheads, fpn_dims, hidden)
        elif mask_on:
            # backbone levels finer than the transformer's input, coarse to fine
            top_stride = shapes[in_feature].stride
            self.pixel_levels = sorted(
                (k for k in shapes if k.startswith("res") and shapes[k].stride < top_stride),
                key=lambda k: -shapes[k].stride,
            )
            lateral_dims = [shapes[k].channels for k in self.pixel_levels]
            self.pixel_decoder = PixelDecoder(hidden, lateral_dims, mask_dim, mask_dim)
            self.mask_embed = MLP(hidden, hidden, mask_dim, 3)
        self.criterion = criterion
        if dense_class_weight > 0 and freeze_detector:
            logger.info("FREEZE_DETECTOR trains the mask head only: no dense class loss")
            dense_class_weight = 0.0
        self.dense_class_weight = dense_class_weight
        if dense_class_weight > 0:
            unknown = set(dense_class_in_features) - set(shapes) - {"memory"}
            if unknown or not dense_class_in_features:
                raise ValueError(
                    f"MODEL.DETR.DENSE_CLASS_IN_FEATURES {list(dense_class_in_features)}: choose "
                    f"from {['memory'] + sorted(shapes)}"
                )
            channels = {
                k: hidden if k == "memory" else shapes[k].channels for k in dense_class_in_features
            }
            self.dense_class_loss = DenseClassLoss(channels, num_classes)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.thing_ids = set(thing_ids)
        self.deep_supervision = deep_supervision
        self.freeze_detector = freeze_detector
        self.size_divisibility = max(size_divisibility, max(s.stride for s in shapes.values()))
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.semantic_on = semantic_on
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.min_segment_area = min_segment_area
        self.score_weighted_masks = score_weighted_masks
        self.split_components = split_components
        self.component_priority = tuple(component_priority)
        self.component_min_fraction = component_min_fraction
        if (panoptic_on or semantic_on) and not mask_on:
            raise ValueError("panoptic / semantic outputs need MODEL.DETR.MASK_ON")
        is_thing_class = torch.zeros(num_classes, dtype=torch.bool)
        is_thing_class[sorted(self.thing_ids)] = True
        self.register_buffer("is_thing_class", is_thing_class, False)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if freeze_detector:
            if not mask_on:
                raise ValueError("MODEL.DETR.FREEZE_DETECTOR trains the mask head: needs MASK_ON")
            for name, p in self.named_parameters():
                if not name.startswith(MASK_HEAD_PREFIXES):
                    p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DETR
        thing_ids = dataset_classes(cfg)
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
            "backbone": build_detr_backbone(cfg),
            "transformer": transformer,
            "criterion": criterion,
            "num_classes": d.NUM_CLASSES,
            "num_queries": d.NUM_OBJECT_QUERIES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "thing_ids": thing_ids,
            "mask_on": d.MASK_ON,
            "mask_attention_rescale": d.MASK_ATTENTION_RESCALE,
            "mask_head": d.MASK_HEAD,
            "mask_dim": d.MASK_DIM,
            "dense_class_weight": d.DENSE_CLASS_WEIGHT,
            "dense_class_in_features": d.DENSE_CLASS_IN_FEATURES,
            "in_feature": d.IN_FEATURE,
            "deep_supervision": d.DEEP_SUPERVISION,
            "freeze_detector": d.FREEZE_DETECTOR,
            "size_divisibility": d.SIZE_DIVISIBILITY,
            "panoptic_on": d.TEST.PANOPTIC_ON,
            "instance_on": d.TEST.INSTANCE_ON,
            "semantic_on": d.TEST.SEMANTIC_ON,
            "object_mask_threshold": d.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": d.TEST.OVERLAP_THRESHOLD,
            "min_segment_area": d.TEST.MIN_SEGMENT_AREA,
            "score_weighted_masks": d.TEST.SCORE_WEIGHTED_MASKS,
            "split_components": d.TEST.SPLIT_COMPONENTS,
            "component_priority": d.TEST.COMPONENT_PRIORITY,
            "component_min_fraction": d.TEST.COMPONENT_MIN_FRACTION,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # -- shared forward ---------------------------------------------------------------------
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

    def detect(self, images, mask):
        """
        Backbone + transformer + class/box heads.

        Returns:
            outputs: dict with "pred_logits" (B, Q, K+1), "pred_boxes" (B, Q, 4) normalised cxcywh
                and "aux_outputs" (earlier decoder layers) when deep supervision is on.
            extras: dict with "features", "src" (projected ``in_feature``), "mask" (its padding),
                "hs" (last decoder layer, (B, Q, C)), "memory" (B, C, h, w).
        """
        features = self.backbone(images.tensor)
        top = features[self.in_feature]
        top_mask = downsample_mask(mask, top.shape[-2:])
        src = self.input_proj(top)
        pos = self.position_embedding(top_mask).to(src.dtype)
        hs, memory = self.transformer(src, top_mask, self.query_embed.weight, pos)
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.deep_supervision and self.training:
            outputs["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        extras = {
            "features": features,
            "src": src,
            "mask": top_mask,
            "hs": hs[-1],
            "hs_layers": hs,
            "memory": memory,
        }
        return outputs, extras

    def predict_masks(self, extras, query_index=None, all_layers=False):
        """(B, N, H/4, W/4) mask logits of the queries ``query_index`` (default: all); with
        ``all_layers`` (dot-product head only) (L, B, N, H/4, W/4), one per decoder layer."""
        hs = extras["hs_layers"] if all_layers else extras["hs"]
        hs = hs if query_index is None else hs[..., query_index, :]
        f = extras["features"]
        if self.mask_head_type == "dot_product":
            pixels = self.pixel_decoder(extras["memory"], [f[k] for k in self.pixel_levels])
            return dot_product_masks(self.mask_embed(hs), pixels)
        assert not all_layers, "per-layer masks need MODEL.DETR.MASK_HEAD dot_product"
        attn = self.bbox_attention(hs, extras["memory"], extras["mask"])
        return self.mask_head(extras["src"], attn, [f["res4"], f["res3"], f["res2"]])

    def forward(self, batched_inputs):
        images, mask = self.preprocess_image(batched_inputs)
        outputs, extras = self.detect(images, mask)
        if not self.training:
            return self.inference(batched_inputs, images, outputs, extras)
        if self.mask_on and self.mask_head_type == "dot_product":
            # every query's masks cost one matrix product: all layers get them (deep supervision)
            masks = self.predict_masks(extras, all_layers=True)
            outputs["pred_masks"] = masks[-1]
            for aux, aux_masks in zip(outputs.get("aux_outputs", []), masks[:-1]):
                aux["pred_masks"] = aux_masks
        elif self.mask_on and self.criterion.matcher.uses_masks:
            outputs["pred_masks"] = self.predict_masks(extras)
        elif self.mask_on:
            # the mask head is per query: only matched queries' masks are computed for the loss
            outputs["mask_predictor"] = functools.partial(self.predict_matched_masks, extras)
        targets = self.prepare_targets(batched_inputs, images)
        losses, metrics = self.criterion(outputs, targets)
        if self.dense_class_weight > 0:
            maps = dict(extras["features"], memory=extras["memory"])
            dense = self.dense_class_loss(maps, targets)
            losses["loss_dense_class"] = self.dense_class_weight * dense
        _put_scalars(**metrics)
        return losses

    # -- training targets -------------------------------------------------------------------
    def prepare_targets(self, batched_inputs, images):
        """
        Instances -> list of dicts with "labels" (N,), "boxes" (N, 4) cxcywh normalised by the
        image size and, with masks, "masks" (N, H_pad, W_pad) bool.

        Targets whose box (clipped to the image) has zero width or height, non-finite
        coordinates, or (with masks) an empty mask are dropped: they would give NaN/inf or
        meaningless GIoU. Their number is recorded as ``dropped_targets``.
        """
        pad_h, pad_w = images.tensor.shape[-2:]
        targets, dropped = [], 0
        for x, (h, w) in zip(batched_inputs, images.image_sizes):
            if "instances" not in x:
                raise ValueError("DETR training needs 'instances' in every input dict")
            inst = x["instances"].to(self.device)
            labels = inst.gt_classes.long()
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"gt_classes {labels.tolist()} outside [0, {self.num_classes}): "
                    "check MODEL.DETR.NUM_CLASSES and the dataset's contiguous ids"
                )
            boxes = inst.gt_boxes.tensor.float().clone()
            finite = torch.isfinite(boxes).all(1)
            boxes = torch.nan_to_num(boxes)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            keep = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            target = {}
            if self.mask_on or self.dense_class_weight > 0:  # (dense targets are from masks)
                masks = self._bitmasks(inst, h, w)
                keep &= masks.flatten(1).any(1)
                padded = masks.new_zeros((len(masks), pad_h, pad_w))
                padded[:, : masks.shape[1], : masks.shape[2]] = masks[:, :pad_h, :pad_w]
                target["masks"] = padded[keep]
            dropped += int((~keep).sum())
            scale = torch.as_tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            target["labels"] = labels[keep]
            target["boxes"] = box_convert(boxes[keep], "xyxy", "cxcywh") / scale
            targets.append(target)
        _put_scalars(dropped_targets=dropped)
        if dropped:
            log_every_n_seconds(
                logging.WARNING,
                f"DETR: dropped {dropped} targets with empty masks or degenerate boxes",
                n=60,
                name=__name__,
            )
        return targets

    @staticmethod
    def _bitmasks(inst, h, w):
        if not inst.has("gt_masks"):
            raise ValueError(
                "MODEL.DETR.MASK_ON and DENSE_CLASS_WEIGHT > 0 need 'gt_masks' in the training "
                "instances"
            )
        gt = inst.gt_masks
        if isinstance(gt, PolygonMasks):
            gt = BitMasks.from_polygon_masks(gt, h, w)
        if isinstance(gt, BitMasks):
            gt = gt.tensor
        return gt.bool().to(inst.gt_classes.device)

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def inference(self, batched_inputs, images, outputs, extras):
        """
        Per image: the mask head runs only on the queries an output needs (kept panoptic
        queries; thing queries for instances; all for sem_seg), on features cropped to the
        image's own padded extent, so results do not depend on the other images of the batch.
        """
        results = []
        div = self.size_divisibility
        for i, x in enumerate(batched_inputs):
            image_size = images.image_sizes[i]
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            canvas = (math.ceil(image_size[0] / div) * div, math.ceil(image_size[1] / div) * div)
            logits = outputs["pred_logits"][i].float()
            scores, labels, prob = class_scores(logits)
            result = {}
            thing_idx = self.is_thing_class[labels].nonzero().flatten()
            if not self.mask_on:
                if self.instance_on:
                    result["instances"] = instance_inference(
                        scores[thing_idx],
                        labels[thing_idx],
                        outputs["pred_boxes"][i][thing_idx],
                        None,
                        (height, width),
                    )
                results.append(result)
                continue

            pan_idx = select_panoptic_queries(logits, self.object_mask_threshold)
            if self.semantic_on:
                needed = torch.arange(len(logits), device=logits.device)
            else:
                needed = pan_idx if self.panoptic_on else pan_idx[:0]
                if self.instance_on:
                    needed = torch.unique(torch.cat([needed, thing_idx]))
            masks = self._image_masks(extras, i, canvas, needed)
            masks = resize_mask_logits(masks, canvas, image_size, (height, width))
            position = torch.full((len(logits),), -1, dtype=torch.long, device=logits.device)
            position[needed] = torch.arange(len(needed), device=logits.device)

            if self.panoptic_on:
                panoptic = panoptic_inference(
                    scores[pan_idx],
                    labels[pan_idx],
                    masks[position[pan_idx]],
                    self.thing_ids,
                    self.overlap_threshold,
                    self.min_segment_area,
                    self.score_weighted_masks,
                )
                if self.split_components:
                    panoptic = split_into_components(
                        *panoptic,
                        self.component_priority,
                        self.min_segment_area,
                        self.component_min_fraction,
                    )
                result["panoptic_seg"] = panoptic
            if self.instance_on:
                result["instances"] = instance_inference(
                    scores[thing_idx],
                    labels[thing_idx],
                    outputs["pred_boxes"][i][thing_idx],
                    masks[position[thing_idx]],
                    (height, width),
                )
            if self.semantic_on:
                result["sem_seg"] = semantic_inference(prob, masks)
            results.append(result)
        return results

    def predict_matched_masks(self, extras, batch_idx, query_idx):
        """(M, H/4, W/4) mask logits of queries ``query_idx[k]`` of images ``batch_idx[k]``;
        equal to ``predict_masks(extras)[batch_idx, query_idx]``."""
        parts, order = [], []
        for b in batch_idx.unique().tolist():
            sel = (batch_idx == b).nonzero().flatten()
            parts.append(self.predict_masks(self._image_extras(extras, b), query_idx[sel])[0])
            order.append(sel)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]

    def _image_extras(self, extras, i, canvas=None):
        """``extras`` of image ``i`` alone, cropped to the (H, W) ``canvas`` if given."""
        shapes = self.backbone.output_shape()

        def crop(t, name):
            t = t[i : i + 1]
            if canvas is None:
                return t
            s = shapes[name].stride
            return t[..., : canvas[0] // s, : canvas[1] // s]

        return {
            "features": {k: crop(v, k) for k, v in extras["features"].items()},
            "src": crop(extras["src"], self.in_feature),
            "mask": crop(extras["mask"], self.in_feature),
            "memory": crop(extras["memory"], self.in_feature),
            "hs": extras["hs"][i : i + 1],
            "hs_layers": extras["hs_layers"][:, i : i + 1],
        }

    def _image_masks(self, extras, i, canvas, query_index):
        """(N, canvas_h/4, canvas_w/4) mask logits of image ``i`` for the given queries."""
        if len(query_index) == 0:
            return extras["features"]["res2"].new_zeros((0, 1, 1))
        return self.predict_masks(self._image_extras(extras, i, canvas), query_index)[0]
