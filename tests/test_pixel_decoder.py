"""The dot-product mask head (MODEL.DETR.MASK_HEAD dot_product): pixel decoder, masks of every
query and decoder layer, its losses and freezing."""

import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from model_utils import make_input, tiny_cfg

from d2_detr.modeling.mask_heads import DotProductMaskHead, PixelDecoder, dot_product_masks

DOT = ("MODEL.DETR.MASK_HEAD", "dot_product", "MODEL.DETR.DOT_PRODUCT.MASK_DIM", "16")


def _build(*opts):
    torch.manual_seed(0)
    return build_model(tiny_cfg(*DOT, *opts))


def _batch():
    return [
        make_input(96, 128, [[10, 10, 60, 50], [70, 20, 120, 90]], [0, 3], seed=1),
        make_input(80, 112, [[5, 5, 40, 70]], [2], seed=2),
    ]


def test_pixel_decoder_reaches_the_finest_level_and_masks_are_dot_products():
    torch.manual_seed(0)
    decoder = PixelDecoder(memory_dim=24, lateral_dims=[40, 8], conv_dim=16, mask_dim=12)
    memory = torch.randn(2, 24, 5, 6)
    laterals = [torch.randn(2, 40, 10, 12), torch.randn(2, 8, 20, 24)]
    pixels = decoder(memory, laterals)
    assert pixels.shape == (2, 12, 20, 24)
    # the memory reaches the output: changing it changes the embeddings everywhere it is upsampled
    assert not torch.allclose(decoder(memory + 1.0, laterals), pixels)
    queries = torch.randn(3, 2, 7, 12)  # (layers, B, N, D)
    masks = dot_product_masks(queries, pixels)
    assert masks.shape == (3, 2, 7, 20, 24)
    expected = (queries[2, 1, 4][:, None, None] * pixels[1]).sum(0)
    torch.testing.assert_close(masks[2, 1, 4], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "in_feature, levels", [("res4", ["res3", "res2"]), ("res5", ["res4", "res3", "res2"])]
)
def test_model_uses_the_levels_below_the_transformer_input(in_feature, levels):
    model = _build("MODEL.DETR.IN_FEATURE", in_feature)
    assert type(model.mask_predictor) is DotProductMaskHead
    assert model.mask_predictor.pixel_levels == levels
    assert (
        model.pixel_decoder.laterals[-1][0].in_channels
        == model.backbone.output_shape()["res2"].channels
    )
    assert not hasattr(model, "mask_head") and not hasattr(model, "bbox_attention")


def test_every_decoder_layer_gets_mask_losses_and_gradients_reach_the_head():
    model = _build("MODEL.DETR.DEC_LAYERS", "3").train()
    with EventStorage():
        losses = model(_batch())
    for suffix in ("", "_0", "_1"):
        assert {f"loss_mask{suffix}", f"loss_dice{suffix}"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # the first layer's mask loss alone trains the pixel decoder and the shared mask embedding
    losses["loss_dice_0"].backward()
    for module in (model.pixel_decoder, model.mask_embed):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_detr_head_keeps_mask_losses_on_the_last_layer_only():
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg("MODEL.DETR.MASK_HEAD", "detr", "MODEL.DETR.DEC_LAYERS", "2")
    ).train()
    with EventStorage():
        losses = model(_batch())
    assert "loss_mask" in losses and "loss_ce_0" in losses and "loss_mask_0" not in losses


def test_freeze_detector_trains_only_the_dot_product_head():
    model = _build("MODEL.DETR.FREEZE_DETECTOR", "True").train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("pixel_decoder.", "mask_embed.")) for n in trainable)
    with EventStorage():
        losses = model(_batch())
    # the frozen decoder's earlier layers still train the mask head (tiny config: 2 layers)
    assert set(losses) == {"loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"}


def test_inference_outputs_and_unknown_head_name():
    model = _build("MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", "0.0").eval()
    with torch.no_grad():
        model.class_embed.bias[-1] = -10.0
        out = model([make_input(70, 90, [], [], with_instances=False)])[0]
    seg, info = out["panoptic_seg"]
    assert seg.shape == (70, 90) and len(info) > 0
    assert out["instances"].pred_masks.shape[1:] == (70, 90)
    with pytest.raises(
        ValueError, match="MASK_HEAD 'conv': choose from \\['detr', 'dot_product'\\]"
    ):
        build_model(tiny_cfg("MODEL.DETR.MASK_HEAD", "conv"))
