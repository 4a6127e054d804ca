"""``add_detr_config(cfg)``: every default of d2-detr, in one place."""

from detectron2.config import CfgNode as CN


def add_detr_config(cfg):
    """Add the ``MODEL.DETR``, solver and input keys used by d2-detr to a Detectron2 config."""
    cfg.MODEL.DETR = CN()
    # Total number of categories (things + stuff) in the dataset's contiguous id space.
    cfg.MODEL.DETR.NUM_CLASSES = 80
    cfg.MODEL.DETR.NUM_OBJECT_QUERIES = 100
    # Contiguous ids of the thing classes, used only when no dataset in DATASETS.TEST/TRAIN has
    # metadata (thing_dataset_id_to_contiguous_id); empty means every class is a thing.
    cfg.MODEL.DETR.THING_CLASSES = []
    # Inputs are padded to a multiple of this (at least the backbone's largest stride)
    cfg.MODEL.DETR.SIZE_DIVISIBILITY = 32

    # Transformer
    cfg.MODEL.DETR.HIDDEN_DIM = 256
    cfg.MODEL.DETR.NHEADS = 8
    cfg.MODEL.DETR.DIM_FEEDFORWARD = 2048
    cfg.MODEL.DETR.ENC_LAYERS = 6
    cfg.MODEL.DETR.DEC_LAYERS = 6
    cfg.MODEL.DETR.DROPOUT = 0.1
    cfg.MODEL.DETR.PRE_NORM = False
    # Backbone: dilate res5 (DC5 variant)
    cfg.MODEL.DETR.DC5 = False
    # Backbone level read by the transformer: "res5" (DETR, stride 32) or "res4" (stride 16,
    # res5 not built: 4x more tokens for small or thin objects, fewer backbone FLOPs)
    cfg.MODEL.DETR.IN_FEATURE = "res5"

    # Loss: deep supervision over every decoder layer, class weights and matcher costs
    cfg.MODEL.DETR.DEEP_SUPERVISION = True
    cfg.MODEL.DETR.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.DETR.CLASS_WEIGHT = 1.0
    cfg.MODEL.DETR.L1_WEIGHT = 5.0
    cfg.MODEL.DETR.GIOU_WEIGHT = 2.0
    cfg.MODEL.DETR.MASK_WEIGHT = 1.0  # sigmoid focal
    cfg.MODEL.DETR.DICE_WEIGHT = 1.0
    cfg.MODEL.DETR.COST_CLASS = 1.0
    cfg.MODEL.DETR.COST_BBOX = 5.0
    cfg.MODEL.DETR.COST_GIOU = 2.0
    # Optional mask costs in the matcher (0 disables them; DETR matches on boxes only), on
    # MATCHER_NUM_POINTS random points
    cfg.MODEL.DETR.COST_MASK = 0.0
    cfg.MODEL.DETR.COST_DICE = 0.0
    cfg.MODEL.DETR.MATCHER_NUM_POINTS = 12544

    # Panoptic mask head; FREEZE_DETECTOR trains only the mask head (DETR's two-stage recipe).
    # MASK_HEAD names a head of d2_detr/modeling/mask_heads: "detr", DETR's per-query
    # attention-map + conv head (official checkpoints); "dot_product", per-pixel embeddings from
    # a small FPN times per-query embeddings (MaskFormer's mask prediction): every query and
    # decoder layer gets masks cheaply
    cfg.MODEL.DETR.MASK_ON = True
    cfg.MODEL.DETR.MASK_HEAD = "detr"
    cfg.MODEL.DETR.FREEZE_DETECTOR = False
    # the dot-product head (MASK_HEAD "dot_product") only
    cfg.MODEL.DETR.DOT_PRODUCT = CN()
    # channels of its FPN and embeddings
    cfg.MODEL.DETR.DOT_PRODUCT.MASK_DIM = 256

    # Training aids for from-scratch training (off: DETR); they change no official weight
    cfg.MODEL.DETR.TRAINING_AIDS = CN()
    # weight of the dense class loss on the encoder memory (modeling/dense_class_loss.py)
    cfg.MODEL.DETR.TRAINING_AIDS.DENSE_CLASS_WEIGHT = 0.0
    # MASK_HEAD "detr" only: multiply its attention maps by H*W (see MHAttentionMap); from
    # scratch that head learns only with it; off reproduces official DETR exactly
    cfg.MODEL.DETR.TRAINING_AIDS.ATTENTION_RESCALE = False

    # Inference
    cfg.MODEL.DETR.TEST = CN()
    cfg.MODEL.DETR.TEST.PANOPTIC_ON = True
    cfg.MODEL.DETR.TEST.INSTANCE_ON = True
    cfg.MODEL.DETR.TEST.SEMANTIC_ON = False
    # Panoptic merging: "detr" (DETR's PostProcessPanoptic: pixel to the arg-max mask logit of
    # the kept queries, segments of at most MIN_SEGMENT_AREA px dropped and their pixels
    # re-assigned) or "maskformer" (MaskFormer's: a query mostly overlapped by others, i.e.
    # winning under OVERLAP_THRESHOLD of its own mask, is dropped; small segments become void).
    # See modeling/postprocess.py.
    cfg.MODEL.DETR.TEST.PANOPTIC_MERGE = "detr"
    # queries whose best class is not "no object" and has probability above this are kept
    cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = 0.85
    cfg.MODEL.DETR.TEST.MIN_SEGMENT_AREA = 4
    # PANOPTIC_MERGE "maskformer" only: the overlap rule, and pixels to the query with the
    # largest class score * mask probability (MaskFormer) instead of the largest mask logit
    cfg.MODEL.DETR.TEST.OVERLAP_THRESHOLD = 0.8
    cfg.MODEL.DETR.TEST.SCORE_WEIGHTED_MASKS = False
    # boxes of the "instances" output: the tight boxes of the predicted masks instead of the
    # regressed ones (a mask-trained model's masks can be better than its boxes)
    cfg.MODEL.DETR.TEST.BOXES_FROM_MASKS = False
    # Panoptic thing segments split into 8-connected components, for datasets whose instances
    # are connected components (the concrete converter's): pixels of a class earlier in the
    # converter's class priority (the dataset metadata's ``class_priority``) connect the parts of
    # a later one; the masks of the "instances" output are split the same way (each by its own
    # pixels; a part's box is its tight box). See modeling/component_split.py. Off for COCO.
    cfg.MODEL.DETR.TEST.COMPONENTS = CN()
    cfg.MODEL.DETR.TEST.COMPONENTS.ENABLED = False
    # a part smaller than this fraction of the segment's largest part is not split off
    cfg.MODEL.DETR.TEST.COMPONENTS.MIN_FRACTION = 0.0

    # Solver: AdamW, smaller backbone lr, no decay on norms/embeddings, full-model clipping
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # CLIP_TYPE "full_model" clips the norm of all gradients together (DETR); Detectron2's
    # "value"/"norm" clip per parameter.
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

    # Input pipeline of the DETR mapper (flip, multi-scale resize, random crop)
    cfg.INPUT.DATASET_MAPPER_NAME = "detr_panoptic"
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = (384, 600)
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    # Photometric augmentation after the geometric one (image only; see
    # data/dataset_mappers/photometric.py): each factor drawn from [1 - x, 1 + x]; noise std
    # in grey levels drawn from [0, NOISE]; Gaussian blur (sigma in BLUR_SIGMA) with BLUR_PROB
    cfg.INPUT.PHOTOMETRIC = CN({"ENABLED": False})
    cfg.INPUT.PHOTOMETRIC.BRIGHTNESS = 0.3
    cfg.INPUT.PHOTOMETRIC.CONTRAST = 0.3
    cfg.INPUT.PHOTOMETRIC.SATURATION = 0.3
    cfg.INPUT.PHOTOMETRIC.WHITE_BALANCE = 0.08  # per-channel gain
    cfg.INPUT.PHOTOMETRIC.BLUR_PROB = 0.2
    cfg.INPUT.PHOTOMETRIC.BLUR_SIGMA = (0.3, 1.2)
    cfg.INPUT.PHOTOMETRIC.NOISE = 6.0
    # Copy-paste of defect instances (Ghiasi et al. 2021, "Simple Copy-Paste"; see
    # data/dataset_mappers/copy_paste.py): with PROB, things of another training image (each
    # kept with probability 0.5, at least one), scaled by a factor from SCALE, flipped half the
    # time, placed at random, are pasted on top; what they cover leaves the other masks
    cfg.INPUT.COPY_PASTE = CN({"ENABLED": False})
    cfg.INPUT.COPY_PASTE.PROB = 0.5
    cfg.INPUT.COPY_PASTE.SCALE = (0.5, 1.5)
    cfg.INPUT.COPY_PASTE.MAX_OBJECTS = 4
    # Exponential moving average of the weights (engine/ema.py), used for evaluation and saved
    # as the inference model (model_final.pth); WARMUP: decay min(DECAY, (1 + n) / (10 + n))
    cfg.MODEL.EMA = CN({"ENABLED": False})
    cfg.MODEL.EMA.DECAY = 0.999
    cfg.MODEL.EMA.WARMUP = True
