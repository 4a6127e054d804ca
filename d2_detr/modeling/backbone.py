"""Backbone for DETR: Detectron2's ResNet returning res2..res5 (or ..res4), plus padding masks."""

import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    ResNet,
    build_resnet_backbone,
)

FEATURES = ("res2", "res3", "res4", "res5")


def build_detr_backbone(cfg):
    """
    Detectron2 backbone from ``cfg.MODEL.BACKBONE`` (ResNet by default) returning res2 up to
    ``MODEL.DETR.IN_FEATURE``: that one (res5, or res4 for a finer token grid with res5 not built)
    feeds the transformer, res2..res4 the mask head. ``MODEL.DETR.DC5`` dilates res5
    (stride 16), as DETR-DC5. ``MODEL.BACKBONE.FREEZE_AT`` and ``MODEL.RESNETS.NORM`` (FrozenBN for
    pretrained weights) apply as in Detectron2.
    """
    cfg = cfg.clone()
    cfg.defrost()
    in_feature = cfg.MODEL.DETR.IN_FEATURE
    if in_feature not in ("res4", "res5"):
        raise ValueError(f"MODEL.DETR.IN_FEATURE must be 'res4' or 'res5', got {in_feature!r}")
    features = FEATURES[: FEATURES.index(in_feature) + 1]
    cfg.MODEL.RESNETS.OUT_FEATURES = list(features)
    if cfg.MODEL.DETR.DC5 and in_feature != "res5":
        raise ValueError(
            "MODEL.DETR.DC5 dilates res5, which MODEL.DETR.IN_FEATURE res4 does not use"
        )
    if cfg.MODEL.DETR.DC5:
        if cfg.MODEL.RESNETS.DEPTH in (18, 34):
            raise ValueError("MODEL.DETR.DC5 needs a bottleneck ResNet (depth >= 50)")
        cfg.MODEL.RESNETS.RES5_DILATION = 2
    backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    missing = [f for f in features if f not in backbone.output_shape()]
    if missing:
        raise ValueError(f"backbone {cfg.MODEL.BACKBONE.NAME} does not output {missing}")
    return backbone


@BACKBONE_REGISTRY.register()
def build_resnet_any_width_backbone(cfg, input_shape):
    """
    Detectron2's ResNet where R18/R34 (basic blocks) may be narrower than 64 channels:
    ``MODEL.RESNETS.STEM_OUT_CHANNELS`` and ``RES2_OUT_CHANNELS`` (doubled at every stage) are
    honoured. Small CPU models use it; depth >= 50 is ``build_resnet_backbone`` unchanged.
    """
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in (18, 34):
        return build_resnet_backbone(cfg, input_shape)
    if r.RES5_DILATION != 1 or r.NUM_GROUPS != 1 or any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("R18/R34: RES5_DILATION 1, NUM_GROUPS 1 and no deformable convs only")
    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[r.DEPTH]
    stages, in_ch, out_ch = [], r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    for i, n in enumerate(blocks):
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                n,
                stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1),
                in_channels=in_ch,
                out_channels=out_ch,
                norm=r.NORM,
            )
        )
        in_ch, out_ch = out_ch, out_ch * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def downsample_mask(mask, size):
    """(B, H, W) bool padding mask -> (B, h, w) bool at a feature map's size (nearest)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].bool()
