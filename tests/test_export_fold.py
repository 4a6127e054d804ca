"""Batch-norm folding for export (issue 17): the folded copy computes what the model computes."""

import d2_detr  # noqa: F401  (compat first)

# isort: split
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from model_utils import tiny_cfg
from torch import nn

from d2_detr.export.fold import fold_batch_norms, fold_conv_bn, foldable_norm

TOL = 1e-5


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def randomise_norms(model, seed=0):
    """Statistics and affine parameters far from identity (fresh norms would fold to nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm)):
                if m.running_mean is None:
                    continue
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g) * 0.5)


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def assert_same_raw_outputs(model, rewritten, generator):
    """``forward_raw`` of both models on one random 75x117 image agree within TOL; returns the
    original model's outputs."""
    image = torch.randint(0, 256, (3, 75, 117), generator=generator).float()
    with torch.no_grad():
        images, mask = model.preprocess_image([{"image": image}])
        ref = model.forward_raw(images.tensor, mask)
        got = rewritten.forward_raw(images.tensor, mask)
    for k in ref:
        assert relative(got[k], ref[k]) <= TOL, (k, relative(got[k], ref[k]))
    return ref


def test_resnet50_frozen_bn_folded_equals_unfolded():
    """Detectron2's R50 (FrozenBN after every conv): all 53 norms folded, outputs of every stage
    equal within 1e-5 relative on random inputs, the original model untouched."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    torch.manual_seed(0)
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    randomise_norms(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, names = fold_batch_norms(model)
    assert len(names) == 53 == count(model, FrozenBatchNorm2d)
    assert count(folded, FrozenBatchNorm2d) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    g = torch.Generator().manual_seed(1)
    for size in [(64, 96), (75, 53)]:
        x = torch.randn(2, 3, *size, generator=g) * 50
        with torch.no_grad():
            ref, got = model(x), folded(x)
        for k in ref:
            assert relative(got[k], ref[k]) <= TOL, (size, k, relative(got[k], ref[k]))
    # the comparison can fail: a model with one norm dropped instead of folded differs
    broken, _ = fold_batch_norms(model)
    broken.stem.conv1.norm = None
    broken.stem.conv1.weight.data.copy_(model.stem.conv1.weight)
    with torch.no_grad():
        assert relative(broken(x)["res5"], ref["res5"]) > 1e-2


def test_sequential_batchnorm_and_what_is_not_folded():
    """torchvision-style conv -> BatchNorm2d in a Sequential (with and without conv bias,
    affine and not) folds; BN in training mode, BN without running statistics, GroupNorm and a
    BN that follows no conv stay as they are."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 1, bias=True),
        nn.BatchNorm2d(6, affine=False),
        nn.Conv2d(6, 4, 3, stride=2, groups=2),
        nn.GroupNorm(2, 4),
        nn.BatchNorm2d(4),  # after a norm, not a conv
        Conv2d(4, 4, 3, padding=1, norm=nn.BatchNorm2d(4, track_running_stats=False)),
    ).eval()
    randomise_norms(model)
    folded, names = fold_batch_norms(model)
    assert names == ["1", "4"]
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[4], nn.Identity)
    assert isinstance(folded[7], nn.BatchNorm2d) and isinstance(folded[8].norm, nn.BatchNorm2d)
    x = torch.randn(3, 3, 21, 17, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative(folded(x), model(x)) <= TOL
    model.train()
    assert not foldable_norm(model[1])
    assert fold_batch_norms(model)[1] == []


def test_fold_conv_bn_refuses_what_it_cannot_fold():
    with pytest.raises(ValueError, match="transposed"):
        fold_conv_bn(nn.ConvTranspose2d(4, 4, 2), nn.BatchNorm2d(4).eval())
    with pytest.raises(ValueError, match="not foldable"):
        fold_conv_bn(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4).train())
    with pytest.raises(ValueError, match="channels"):
        fold_conv_bn(nn.Conv2d(4, 4, 1), FrozenBatchNorm2d(5))


def test_detr_with_frozen_bn_backbone_folded_raw_outputs_equal():
    """A whole DETR (tiny config with a FrozenBN backbone, as the R50 configs): forward_raw of
    the folded copy equals the model's within 1e-5 relative (logits, boxes, mask logits)."""
    cfg = tiny_cfg("MODEL.RESNETS.NORM", "FrozenBN")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomise_norms(model.backbone)
    folded, names = fold_batch_norms(model)
    assert len(names) == count(model.backbone, FrozenBatchNorm2d) > 0
    assert_same_raw_outputs(model, folded, torch.Generator().manual_seed(3))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_folds_the_norms_and_equals_pytorch(tmp_path, fmt):
    """Export folds a FrozenBN backbone (the traced graph has no batch_norm left; the model
    passed in keeps its norms) and the exported file still gives PyTorch's raw outputs within
    1e-4 relative and its panoptic results on two sizes."""
    from d2_detr.export import ExportedDETR, export_onnx, export_torchscript
    from d2_detr.export.check import check_exported

    cfg = tiny_cfg("MODEL.RESNETS.NORM", "FrozenBN", "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomise_norms(model.backbone)
    with torch.no_grad():
        model.class_embed.bias.copy_(torch.tensor([1.0, 0.5, 1.0, 0.0, -3.0]))
    g = torch.Generator().manual_seed(4)
    images = [
        torch.randint(0, 256, (3, h, w), generator=g).float() for h, w in [(75, 117), (64, 50)]
    ]
    n_norms = count(model, FrozenBatchNorm2d)
    path = str(tmp_path / ("model.onnx" if fmt == "onnx" else "model.ts"))
    export = export_onnx if fmt == "onnx" else export_torchscript
    info = export(model, path, images[0][None], cfg=cfg)
    assert info["folded_norms"] == n_norms > 0
    assert count(model, FrozenBatchNorm2d) == n_norms  # the caller's model is not changed
    if fmt == "torchscript":
        graph = str(torch.jit.load(path).inlined_graph)
        assert "aten::batch_norm" not in graph and "aten::_convolution" in graph
        export_torchscript(model, path, images[0][None], cfg=cfg, fold_bn=False)
        assert "aten::batch_norm" in str(torch.jit.load(path).inlined_graph)  # the check can fail
        export(model, path, images[0][None], cfg=cfg)
    for row in check_exported(model, ExportedDETR(cfg, path), images):
        assert max(row["relative_error"].values()) <= 1e-4, row
        assert not row["problems"] and row["segments"] >= 1, row


def test_mask_head_split_equals_the_head():
    """DETR's mask head with lay1's shared part computed once per image: the same mask logits as
    the model's head within 1e-5 relative (module and whole model); the model is not changed."""
    from d2_detr.export import prepare_for_export
    from d2_detr.export.mask_head import SharedFeatureMaskHead
    from d2_detr.modeling.mask_heads import MaskHeadSmallConv

    cfg = tiny_cfg(
        "MODEL.DETR.MASK_HEAD", "detr", "MODEL.DETR.IN_FEATURE", "res5",
        "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.DETR.TRAINING_AIDS.ATTENTION_RESCALE", "True",
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomise_norms(model.backbone)
    with torch.no_grad():  # distinct attention maps per query (rescaled: they matter)
        model.query_embed.weight.mul_(10)
        model.bbox_attention.q_linear.weight.mul_(10)
        model.mask_head.lay1.weight[:, 64:].mul_(30)  # the attention channels
    copy, rewrites = prepare_for_export(model)
    assert rewrites["split_mask_heads"] == 1 and rewrites["folded_norms"] > 0
    assert isinstance(copy.mask_predictor.mask_head, SharedFeatureMaskHead)
    assert type(model.mask_predictor.mask_head) is MaskHeadSmallConv
    g = torch.Generator().manual_seed(5)
    head = model.mask_predictor.mask_head
    x, attn = torch.randn(2, 64, 3, 4, generator=g), torch.rand(2, 7, 4, 3, 4, generator=g)
    widths = [a.in_channels for a in (head.adapter1, head.adapter2, head.adapter3)]
    fpns = [torch.randn(2, c, 6 * 2**i, 8 * 2**i, generator=g) for i, c in enumerate(widths)]
    with torch.no_grad():
        ref = head(x, attn, fpns)
        got = SharedFeatureMaskHead(head)(x, attn, fpns)
    assert got.shape == ref.shape == (2, 7, 24, 32)
    assert relative(got, ref) <= TOL
    ref = assert_same_raw_outputs(model, copy, g)
    # the queries' masks differ by far more than the tolerance: the per-query part was compared
    assert ref["pred_masks"][0].std(0).mean() > 20 * TOL * ref["pred_masks"].abs().max()
    with pytest.raises(TypeError):
        SharedFeatureMaskHead(nn.Conv2d(1, 1, 1))
