"""The DETR meta-architecture end to end on tiny CPU models."""

import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import copy

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from model_utils import make_input, tiny_cfg
from PIL import Image

from d2_detr.modeling import DETR
from d2_detr.modeling.targets import instances_to_targets

# DETR's own mask head (the tiny config uses the dot-product head), box-only matching
DETR_HEAD = (
    "MODEL.DETR.MASK_HEAD", "detr", "MODEL.DETR.COST_MASK", "0.0", "MODEL.DETR.COST_DICE", "0.0",
)  # fmt: skip


def _build(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(*opts))


def _train_batch():
    return [
        make_input(96, 128, [[10, 10, 60, 50], [70, 20, 120, 90]], [0, 3], seed=1),
        make_input(80, 112, [[5, 5, 40, 70]], [2], seed=2),
    ]


@pytest.mark.parametrize(
    "head, prefixes", [(DETR_HEAD, ("bbox_attention.", "mask_head.")),
                       ((), ("pixel_decoder.", "mask_embed."))]
)  # fmt: skip
def test_mask_head_parameters_keep_their_top_level_names(head, prefixes):
    """The head's modules are the model's own children: state-dict keys, parameters and the
    head's forward all refer to the same tensors (official checkpoint names)."""
    model = _build(*head)
    assert type(model) is DETR and model.thing_ids == {0, 1, 2}  # THING_CLASSES: no dataset
    assert model.class_embed.out_features == 5  # 4 classes + no-object
    keys = list(model.state_dict())
    head_keys = [k for k in keys if k.startswith(prefixes)]
    assert head_keys and not any(k.startswith("mask_predictor") for k in keys)
    head_params = dict(model.mask_predictor.named_parameters())
    assert {k for k in head_keys if k in dict(model.named_parameters())} == set(head_params)
    for name, p in head_params.items():
        assert model.get_parameter(name) is p
    # loading new weights into the model changes what the head computes
    images, mask = model.preprocess_image([make_input(64, 96, [], [], with_instances=False)])
    with torch.no_grad():
        before = model.forward_raw(images.tensor, mask)["pred_masks"]
        sd = model.state_dict()
        model.load_state_dict({k: v + 0.5 if k in head_keys else v for k, v in sd.items()})
        after = model.forward_raw(images.tensor, mask)["pred_masks"]
    assert not torch.allclose(before, after)
    # a deep copy (EMA weights, ...) keeps head and model on the same (copied) modules
    twin = copy.deepcopy(model)
    for name, p in twin.mask_predictor.named_parameters():
        assert twin.get_parameter(name) is p and p is not model.get_parameter(name)
    assert not twin.eval().mask_predictor.training


def test_train_losses_finite_and_backward_reaches_every_parameter():
    model = _build().train()
    with EventStorage() as storage:
        losses = model(_train_batch())
        assert all(k.startswith("loss_") for k in losses)
        assert {"loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_ce_0"} <= set(
            losses
        )
        assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
        sum(losses.values()).backward()
        latest = storage.latest()
    assert {"class_error", "cardinality_error", "dropped_targets"} <= set(latest)
    assert latest["dropped_targets"][0] == 0
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    # all gradients non-zero, except DETR's first decoder self-attention: its input is zeros
    zero = [n for n, p in trainable.items() if not p.grad.abs().sum() > 0]
    assert all(n.startswith("transformer.decoder.layers.0.") for n in zero), zero


def test_mask_matching_costs_with_deep_supervision():
    """DETR's head: mask costs match the last layer on masks; earlier layers (no masks) on class
    and box."""
    model = _build(
        "MODEL.DETR.MASK_HEAD", "detr", "MODEL.DETR.COST_MASK", "5.0", "MODEL.DETR.COST_DICE", "5.0"
    ).train()
    assert model.criterion.matcher.uses_masks and model.deep_supervision
    with EventStorage():
        losses = model(_train_batch())
    assert {"loss_mask", "loss_dice", "loss_ce_0", "loss_bbox_0"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("head", [DETR_HEAD, ()])
def test_degenerate_and_empty_targets_are_dropped_and_counted(head):
    model = _build(*head).train()
    bad = make_input(96, 128, [[10, 10, 60, 50], [30, 30, 30, 60], [5, 5, 20, 20]], [0, 1, 2])
    bad["instances"].gt_masks.tensor[2] = False  # empty mask, valid box
    empty = make_input(80, 112, [], [], seed=3)
    with EventStorage() as storage:
        losses = model([bad, empty])
        dropped = storage.latest()["dropped_targets"][0]
    assert dropped == 2
    assert all(torch.isfinite(v) for v in losses.values())
    # a batch without any target trains too
    with EventStorage():
        losses = model([empty, make_input(64, 64, [], [], seed=4)])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    last_mask_layer = model.mask_head.out_lay if head else model.pixel_decoder.mask_features
    assert last_mask_layer.weight.grad is not None


def test_bad_class_ids_raise_a_clear_error():
    model = _build().train()
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        with EventStorage():
            model([make_input(64, 64, [[1, 1, 30, 30]], [4])])


def test_polygon_masks_equal_bitmasks():
    batch = _train_batch()
    poly_batch = []
    for x in batch:
        inst = x["instances"]
        polys = []
        for x0, y0, x1, y1 in inst.gt_boxes.tensor.tolist():
            polys.append([[x0, y0, x1, y0, x1, y1, x0, y1]])
        new = Instances(inst.image_size, gt_boxes=Boxes(inst.gt_boxes.tensor.clone()))
        new.gt_classes = inst.gt_classes.clone()
        new.gt_masks = PolygonMasks(polys)
        poly_batch.append({"image": x["image"], "instances": new})
    model = _build("MODEL.DETR.DROPOUT", "0.0").train()
    with EventStorage():
        bit = model(batch)
        poly = model(poly_batch)
    for k in bit:
        torch.testing.assert_close(bit[k], poly[k], atol=0.05, rtol=0.05)


def test_only_matched_masks_computed_same_loss():
    """DETR's head in training runs only for matched queries: same losses as all queries."""
    model = _build(*DETR_HEAD, "MODEL.DETR.DROPOUT", "0.0").train()
    batch = _train_batch()
    images, mask = model.preprocess_image(batch)
    det = model.detect(images.tensor, mask)
    targets, _ = instances_to_targets(
        [x["instances"] for x in batch], images.image_sizes, images.tensor.shape[-2:], 4, True
    )
    outputs = {"pred_logits": det["pred_logits"][-1], "pred_boxes": det["pred_boxes"][-1]}
    lazy = dict(outputs, mask_predictor=lambda b, q: model.predict_matched_masks(det, b, q))
    full = dict(outputs, pred_masks=model.predict_masks(det, det["hs"][-1]))
    torch.manual_seed(0)
    lazy_losses, _ = model.criterion(lazy, targets)
    full_losses, _ = model.criterion(full, targets)
    for k in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(lazy_losses[k], full_losses[k], atol=1e-5, rtol=1e-5)


def test_freeze_detector_trains_only_the_mask_head():
    model = _build(*DETR_HEAD, "MODEL.DETR.FREEZE_DETECTOR", "True").train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("mask_head.", "bbox_attention.")) for n in trainable)
    with EventStorage():
        losses = model(_train_batch())
    assert set(losses) == {"loss_mask", "loss_dice"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def _infer(model, inputs):
    with torch.no_grad():
        return model(inputs)


def test_outputs_at_original_size():
    model = _build("MODEL.DETR.TEST.SEMANTIC_ON", "True").eval()
    x = make_input(96, 128, [], [], with_instances=False)
    out = _infer(model, [dict(x, height=48, width=70), x])
    seg, info = out[0]["panoptic_seg"]
    assert seg.shape == (48, 70) and seg.dtype == torch.int32
    assert out[0]["sem_seg"].shape == (4, 48, 70)
    assert out[0]["instances"].image_size == (48, 70)
    assert out[0]["instances"].pred_masks.shape[1:] == (48, 70)
    assert out[1]["panoptic_seg"][0].shape == (96, 128)  # no height/width: the input size
    boxes = out[0]["instances"].pred_boxes.tensor
    assert (boxes[:, 2] <= 70).all() and (boxes[:, 3] <= 48).all()
    assert set(out[0]["instances"].pred_classes.tolist()) <= {0, 1, 2}  # things only


@pytest.mark.parametrize(
    "in_feature, mask_head", [("res5", "detr"), ("res4", "detr"), ("res4", "dot_product")]
)
def test_batch_equals_single_image_inference(in_feature, mask_head):
    """
    GroupNorm backbone (the tiny config's), images of different sizes: batched inference gives
    exactly the single-image results (each image runs padded alone; in one padded batch,
    GroupNorm statistics would include the other images' padding).
    """
    model = _build(
        "MODEL.DETR.TEST.SEMANTIC_ON", "True", "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", "0.2",
        "MODEL.DETR.TEST.OVERLAP_THRESHOLD", "0.0",
        "MODEL.DETR.IN_FEATURE", in_feature, "MODEL.DETR.MASK_HEAD", mask_head,
        "MODEL.DETR.TEST.SCORE_WEIGHTED_MASKS", "False",
    ).eval()  # fmt: skip
    assert model.backbone.res2[0].conv1.norm.__class__.__name__ == "GroupNorm"
    with torch.no_grad():
        model.class_embed.bias[-1] = -10.0  # no query predicts "no object": many segments
        model.class_embed.bias[3] = -2.0  # fewer stuff queries: some instances
    a = make_input(96, 128, [], [], seed=5, with_instances=False)
    b = make_input(70, 150, [], [], seed=6, with_instances=False)
    batch = _infer(model, [a, b])
    for x, out in zip([a, b], batch):
        alone = _infer(model, [x])[0]
        assert torch.equal(out["sem_seg"], alone["sem_seg"])
        inst, inst1 = out["instances"], alone["instances"]
        assert len(inst) == len(inst1) > 0
        assert torch.equal(inst.scores, inst1.scores)
        assert torch.equal(inst.pred_boxes.tensor, inst1.pred_boxes.tensor)
        assert torch.equal(inst.pred_masks, inst1.pred_masks)
        assert torch.equal(out["panoptic_seg"][0], alone["panoptic_seg"][0])
        assert out["panoptic_seg"][1] == alone["panoptic_seg"][1]
        assert len(alone["panoptic_seg"][1]) > 1
    # what per-image inference avoids: one padded GroupNorm batch changes the small image's
    # backbone features
    images, _ = model.preprocess_image([a, b])
    single, _ = model.preprocess_image([a])
    with torch.no_grad():
        in_batch = model.backbone(images.tensor)["res3"][0, :, : 96 // 8, : 128 // 8]
        by_itself = model.backbone(single.tensor)["res3"][0]
    assert (in_batch - by_itself).abs().max() > 1e-3


@pytest.mark.parametrize("merge", ["maskformer", "detr"])
def test_forward_raw_then_postprocessing_equals_inference(merge):
    """The export path: raw outputs for all queries + ``image_outputs`` give the model's own
    results; the traced raw path runs at another input size with the same outputs."""
    from d2_detr.modeling.inference import image_outputs

    model = _build(
        "MODEL.DETR.TEST.SEMANTIC_ON", "True", "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", "0.2",
        "MODEL.DETR.TEST.PANOPTIC_MERGE", merge, "MODEL.DETR.TEST.MIN_SEGMENT_AREA", "4",
    ).eval()  # fmt: skip
    with torch.no_grad():
        model.class_embed.bias[-1] = -10.0
    x = make_input(96, 128, [], [], seed=8, with_instances=False)
    expected = _infer(model, [dict(x, height=50, width=70)])[0]
    images = ((x["image"].float() - model.pixel_mean) / model.pixel_std)[None]
    with torch.no_grad():
        raw = model.forward_raw(images)
    assert raw["pred_masks"].shape == (1, 10, 24, 32) and raw["pred_logits"].shape == (1, 10, 5)
    got = image_outputs(
        raw["pred_logits"][0], raw["pred_boxes"][0], raw["pred_masks"][0], model.settings,
        (96, 128), (96, 128), (50, 70),
    )  # fmt: skip
    torch.testing.assert_close(got["sem_seg"], expected["sem_seg"])
    assert torch.equal(got["panoptic_seg"][0], expected["panoptic_seg"][0])
    assert got["panoptic_seg"][1] == expected["panoptic_seg"][1] and len(got["panoptic_seg"][1])
    if merge == "detr":  # every pixel belongs to a segment (small ones are re-assigned)
        assert (got["panoptic_seg"][0] > 0).all()
    assert torch.equal(got["instances"].pred_boxes.tensor, expected["instances"].pred_boxes.tensor)

    class Raw(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, images):
            out = self.m.forward_raw(images)
            return out["pred_logits"], out["pred_boxes"], out["pred_masks"]

    with torch.no_grad():
        traced = torch.jit.trace(Raw(model), torch.randn(1, 3, 64, 96), check_trace=False)
        for got, want in zip(traced(images), (raw["pred_logits"], raw["pred_boxes"],
                                              raw["pred_masks"])):  # fmt: skip
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_boxes_from_masks():
    # one instance per query (the component split gives every part its tight box anyway)
    opts = (
        "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD",
        "0.2",
        "MODEL.DETR.TEST.COMPONENTS.ENABLED",
        "False",
    )
    plain = _build(*opts, "MODEL.DETR.TEST.BOXES_FROM_MASKS", "False").eval()
    tight = _build(*opts, "MODEL.DETR.TEST.BOXES_FROM_MASKS", "True").eval()
    with torch.no_grad():
        plain.class_embed.bias[-1] = -10.0  # thing queries: instances
        plain.class_embed.bias[3] = -10.0
    tight.load_state_dict(plain.state_dict())
    x = make_input(96, 128, [], [], seed=9, with_instances=False)
    a, b = _infer(plain, [x])[0]["instances"], _infer(tight, [x])[0]["instances"]
    assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.scores, b.scores)
    checked = 0
    for mask, box, regressed in zip(b.pred_masks, b.pred_boxes.tensor, a.pred_boxes.tensor):
        if not mask.any():
            assert torch.equal(box, regressed)
            continue
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        expected = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert box.tolist() == [float(v) for v in expected]
        checked += 1
        assert not mask.all()  # a tight box inside the image
    assert checked > 0 and not torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_panoptic_only_output_equals_full_output():
    opts = ("MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", "0.3")
    full = _build(*opts, "MODEL.DETR.TEST.SEMANTIC_ON", "True").eval()
    only = _build(*opts, "MODEL.DETR.TEST.INSTANCE_ON", "False").eval()
    only.load_state_dict(full.state_dict())
    x = make_input(96, 128, [], [], seed=7, with_instances=False)
    out_full, out_only = _infer(full, [x])[0], _infer(only, [x])[0]
    assert set(out_only) == {"panoptic_seg"}
    assert torch.equal(out_full["panoptic_seg"][0], out_only["panoptic_seg"][0])
    assert out_full["panoptic_seg"][1] == out_only["panoptic_seg"][1]


def test_detection_only_model():
    model = _build("MODEL.DETR.MASK_ON", "False", "MODEL.DETR.TEST.PANOPTIC_ON", "False")
    assert not hasattr(model, "mask_head") and not hasattr(model, "pixel_decoder")
    with EventStorage():
        losses = model.train()(_train_batch())
    assert "loss_mask" not in losses and "loss_bbox" in losses
    out = _infer(model.eval(), [make_input(64, 80, [], [], with_instances=False)])[0]
    assert set(out) == {"instances"} and not out["instances"].has("pred_masks")


def test_num_classes_checked_against_metadata():
    name = "_test_detr_model_meta"
    meta = MetadataCatalog.get(name)
    if not meta.get("thing_dataset_id_to_contiguous_id"):
        meta.set(
            thing_classes=["rebar", "crack"],
            stuff_classes=["rebar", "crack", "background"],
            thing_dataset_id_to_contiguous_id={1: 0, 3: 1},
            stuff_dataset_id_to_contiguous_id={1: 0, 3: 1, 4: 2},
        )
    with pytest.raises(ValueError, match="NUM_CLASSES is 4 but dataset '_test_detr_model_meta'"):
        build_model(tiny_cfg("DATASETS.TEST", f"('{name}',)"))
    model = build_model(tiny_cfg("DATASETS.TEST", f"('{name}',)", "MODEL.DETR.NUM_CLASSES", "3"))
    assert model.thing_ids == {0, 1}


def test_trains_and_predicts_on_mapped_synthetic_data(data_synthetic_root):
    """The data pipeline's records, mapper and metadata feed the model unchanged."""
    from detectron2.data import DatasetCatalog

    from d2_detr.data.dataset_mappers import DetrPanopticDatasetMapper
    from d2_detr.data.datasets.register_concrete_defects import register_concrete_defects

    prefix = "_test_detr_model_synth"
    register_concrete_defects(data_synthetic_root, name_prefix=prefix, splits=("train", "val"))
    cfg = tiny_cfg(
        "DATASETS.TRAIN", f"('{prefix}_train_panoptic',)",
        "DATASETS.TEST", f"('{prefix}_val_panoptic',)",
        "MODEL.RESNETS.NORM", "GN", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96",
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    meta = MetadataCatalog.get(f"{prefix}_train_panoptic")
    assert model.thing_ids == set(meta.thing_dataset_id_to_contiguous_id.values()) == {0, 1, 2}

    records = DatasetCatalog.get(f"{prefix}_train_panoptic")
    mapper = DetrPanopticDatasetMapper(cfg, is_train=True)
    batch = [mapper(r) for r in records[:2]]
    assert sum(len(x["instances"]) for x in batch) > 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    with EventStorage() as storage:
        for _ in range(2):
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        assert storage.latest()["dropped_targets"][0] == 0
    assert all(torch.isfinite(v) for v in losses.values())

    val = DatasetCatalog.get(f"{prefix}_val_panoptic")[:2]
    test_mapper = DetrPanopticDatasetMapper(cfg, is_train=False)
    inputs = [test_mapper(r) for r in val]
    outputs = _infer(model.eval(), inputs)
    for r, x, out in zip(val, inputs, outputs):
        seg, info = out["panoptic_seg"]
        with Image.open(r["file_name"]) as im:
            assert seg.shape == (x["height"], x["width"]) == (im.height, im.width)
        assert all(0 <= s["category_id"] < 4 for s in info)


def test_res4_in_feature_gives_a_finer_token_grid():
    model = _build("MODEL.DETR.IN_FEATURE", "res4")
    assert set(model.backbone.output_shape()) == {"res2", "res3", "res4"}  # res5 not built
    assert not any(n.startswith("backbone.res5") for n, _ in model.named_parameters())
    images, mask = model.preprocess_image([make_input(96, 128, [], [], with_instances=False)])
    det = model.detect(images.tensor, mask)
    assert det["memory"].shape[-2:] == (96 // 16, 128 // 16)
    model.train()
    with EventStorage():
        losses = model(_train_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="IN_FEATURE"):
        _build("MODEL.DETR.IN_FEATURE", "res3")
