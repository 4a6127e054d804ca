"""Shared helpers of the model tests: tiny configs, synthetic inputs, official DETR key layout."""

import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import os  # noqa: E402

import torch
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances

TINY = "configs/ConcreteDefects/detr_tiny_cpu.yaml"
TINY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), TINY)
# the tiny config made smaller still, for end-to-end tests: 64-128 px images, one layer each side
SMALL_IMAGES = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip
SMALL_MODEL = [
    "MODEL.DETR.HIDDEN_DIM", "64", "MODEL.DETR.DIM_FEEDFORWARD", "64",
    "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "1",
]  # fmt: skip


def tiny_cfg(*opts):
    """The CPU config, made even smaller for tests (no dataset: THING_CLASSES [0, 1, 2])."""
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
            "MODEL.DETR.HIDDEN_DIM", "64", "MODEL.DETR.NHEADS", "4",
            "MODEL.DETR.DIM_FEEDFORWARD", "64", "MODEL.DETR.NUM_OBJECT_QUERIES", "10",
        ]
        + list(opts)
    )  # fmt: skip
    return cfg


def make_input(h, w, boxes, classes, seed=0, with_instances=True):
    """Dataset-mapper-like dict: random uint8 image, rectangle masks filling ``boxes`` (xyxy)."""
    g = torch.Generator().manual_seed(seed)
    d = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)}
    if with_instances:
        inst = Instances((h, w))
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        masks = torch.zeros((len(boxes), h, w), dtype=torch.bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.round().long().tolist()):
            m[y0:y1, x0:x1] = True
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        inst.gt_masks = BitMasks(masks)
        d["instances"] = inst
    return d


def _frozen_bn(sd, prefix, c):
    for n in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{prefix}.{n}"] = torch.randn(c)


def _linear(sd, prefix, out_dim, in_dim):
    sd[f"{prefix}.weight"] = torch.randn(out_dim, in_dim)
    sd[f"{prefix}.bias"] = torch.randn(out_dim)


def _conv(sd, prefix, out_dim, in_dim, k, bias=True):
    sd[f"{prefix}.weight"] = torch.randn(out_dim, in_dim, k, k)
    if bias:
        sd[f"{prefix}.bias"] = torch.randn(out_dim)


def official_resnet50(sd, prefix):
    """torchvision ResNet-50 layout (the official DETR backbone), FrozenBN buffers."""
    _conv(sd, f"{prefix}conv1", 64, 3, 7, bias=False)
    _frozen_bn(sd, f"{prefix}bn1", 64)
    inplanes = 64
    for layer, (blocks, planes) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), start=1):
        for b in range(blocks):
            p = f"{prefix}layer{layer}.{b}"
            _conv(sd, f"{p}.conv1", planes, inplanes, 1, bias=False)
            _frozen_bn(sd, f"{p}.bn1", planes)
            _conv(sd, f"{p}.conv2", planes, planes, 3, bias=False)
            _frozen_bn(sd, f"{p}.bn2", planes)
            _conv(sd, f"{p}.conv3", planes * 4, planes, 1, bias=False)
            _frozen_bn(sd, f"{p}.bn3", planes * 4)
            if b == 0:
                _conv(sd, f"{p}.downsample.0", planes * 4, inplanes, 1, bias=False)
                _frozen_bn(sd, f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4


def official_detr_state_dict(num_classes, num_queries, panoptic=True, hidden=256, nheads=8):
    """
    Random tensors with the key names and shapes of the official DETR-R50 (models/detr.py,
    transformer.py, backbone.py, segmentation.py): 6+6 layers, FFN 2048. ``num_classes`` is
    DETR's ``num_classes`` (the classifier has ``num_classes + 1`` outputs).
    """
    sd = {}
    official_resnet50(sd, "backbone.0.body.")
    _conv(sd, "input_proj", hidden, 2048, 1)
    sd["query_embed.weight"] = torch.randn(num_queries, hidden)
    _linear(sd, "class_embed", num_classes + 1, hidden)
    for i, (o, n) in enumerate([(hidden, hidden), (hidden, hidden), (4, hidden)]):
        _linear(sd, f"bbox_embed.layers.{i}", o, n)

    def attn(p):
        sd[f"{p}.in_proj_weight"] = torch.randn(3 * hidden, hidden)
        sd[f"{p}.in_proj_bias"] = torch.randn(3 * hidden)
        _linear(sd, f"{p}.out_proj", hidden, hidden)

    for i in range(6):
        p = f"transformer.encoder.layers.{i}"
        attn(f"{p}.self_attn")
        _linear(sd, f"{p}.linear1", 2048, hidden)
        _linear(sd, f"{p}.linear2", hidden, 2048)
        for n in (1, 2):
            sd[f"{p}.norm{n}.weight"], sd[f"{p}.norm{n}.bias"] = torch.randn(2, hidden)
    for i in range(6):
        p = f"transformer.decoder.layers.{i}"
        attn(f"{p}.self_attn")
        attn(f"{p}.multihead_attn")
        _linear(sd, f"{p}.linear1", 2048, hidden)
        _linear(sd, f"{p}.linear2", hidden, 2048)
        for n in (1, 2, 3):
            sd[f"{p}.norm{n}.weight"], sd[f"{p}.norm{n}.bias"] = torch.randn(2, hidden)
    sd["transformer.decoder.norm.weight"], sd["transformer.decoder.norm.bias"] = torch.randn(
        2, hidden
    )
    if not panoptic:
        return sd

    sd = {f"detr.{k}": v for k, v in sd.items()}
    _linear(sd, "bbox_attention.q_linear", hidden, hidden)
    _linear(sd, "bbox_attention.k_linear", hidden, hidden)
    dim = hidden + nheads
    inter = [dim, hidden // 2, hidden // 4, hidden // 8, hidden // 16]
    _conv(sd, "mask_head.lay1", dim, dim, 3)
    for i in range(1, 5):
        _conv(sd, f"mask_head.lay{i + 1}", inter[i], inter[i - 1], 3)
    for i in range(5):
        sd[f"mask_head.gn{i + 1}.weight"], sd[f"mask_head.gn{i + 1}.bias"] = torch.randn(
            2, inter[i]
        )
    _conv(sd, "mask_head.out_lay", 1, inter[4], 3)
    for i, c in enumerate((1024, 512, 256), start=1):
        _conv(sd, f"mask_head.adapter{i}", inter[i], c, 1)
    return sd


def official_parameter_count(sd):
    """Parameters of the official model: FrozenBN statistics/affine are buffers there."""
    return sum(v.numel() for k, v in sd.items() if ".bn" not in k and "downsample.1" not in k)


def last_checkpoint(out):
    """The file name ``out/last_checkpoint`` names, or None before the first checkpoint."""
    try:
        with open(os.path.join(out, "last_checkpoint")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
