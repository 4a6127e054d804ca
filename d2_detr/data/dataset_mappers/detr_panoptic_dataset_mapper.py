"""DETR's training input pipeline for COCO-panoptic records (Detectron2's panoptic catalog)."""

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from panopticapi.utils import rgb2id

from .copy_paste import draw_paste, paste_segments, transform_source
from .photometric import build_photometric_augmentations

__all__ = ["DetrPanopticDatasetMapper", "build_detr_augmentations"]

logger = logging.getLogger(__name__)

# DETR resizes the shortest edge to one of these before its random crop; override with
# INPUT.CROP.RESIZE_BEFORE_CROP where the config defines it.
DEFAULT_RESIZE_BEFORE_CROP = (400, 500, 600)


def build_detr_augmentations(cfg, is_train):
    """
    DETR's recipe as two Detectron2 augmentation lists.

    Returns:
        (plain, with_crop): ``plain`` = [flip, multi-scale resize]; ``with_crop`` = [flip,
        resize to RESIZE_BEFORE_CROP, random crop INPUT.CROP, multi-scale resize], or None when
        INPUT.CROP.ENABLED is off. At test time only the fixed test resize.
    """
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)], None
    flip = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        flip = [
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        ]
    resize = T.ResizeShortestEdge(
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    )
    plain = flip + [resize]
    if not cfg.INPUT.CROP.ENABLED:
        return plain, None
    before = tuple(cfg.INPUT.CROP.get("RESIZE_BEFORE_CROP", DEFAULT_RESIZE_BEFORE_CROP))
    with_crop = flip + [
        T.ResizeShortestEdge(before, sample_style="choice"),
        T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
        resize,
    ]
    return plain, with_crop


class DetrPanopticDatasetMapper:
    """
    Maps a COCO-panoptic dataset dict (``file_name``, ``pan_seg_file_name``, ``segments_info``
    with contiguous ``category_id``) to DETR's training input.

    Output dict: "image" (3, H, W) uint8 tensor of the augmented image; "height"/"width" of the
    original image; in training "instances" with ``gt_classes`` (N,), ``gt_masks`` BitMasks
    (N, H, W) and ``gt_boxes`` (N, 4) absolute xyxy on the augmented image. Every non-crowd
    segment (things and stuff) is a target; segments with no pixel left after the crop are
    dropped. Augmentation: with probability ``crop_prob`` the crop pipeline, else the plain one
    (DETR's RandomSelect). Training options after that: copy-paste of thing segments from the
    records of ``copy_paste_pool`` (with probability ``copy_paste_prob``; see copy_paste.py),
    then ``photometric`` augmentations (image only). All random draws use numpy's global RNG.
    """

    @configurable
    def __init__(
        self,
        is_train=True,
        *,
        augmentations,
        crop_augmentations=None,
        image_format,
        crop_prob=0.5,
        photometric=(),
        copy_paste_pool=(),
        copy_paste_prob=0.5,
        copy_paste_scale=(0.5, 1.5),
        copy_paste_max_objects=4,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.crop_augmentations = (
            T.AugmentationList(crop_augmentations) if crop_augmentations else None
        )
        self.image_format = image_format
        self.crop_prob = crop_prob
        self.photometric = T.AugmentationList(list(photometric)) if photometric else None
        self.copy_paste_pool = [d for d in copy_paste_pool if _things(d)]  # records with things
        self.copy_paste_prob = copy_paste_prob
        self.copy_paste_scale = tuple(copy_paste_scale)
        self.copy_paste_max_objects = copy_paste_max_objects
        mode = "training" if is_train else "inference"
        extra = f", photometric: {list(photometric)}" if photometric else ""
        if self.copy_paste_pool:
            extra += f", copy-paste from {len(self.copy_paste_pool)} images (p {copy_paste_prob})"
        logger.info(
            f"[DetrPanopticDatasetMapper] {mode}: {augmentations}, crop: {crop_augmentations}"
            + extra
        )

    @classmethod
    def from_config(cls, cfg, is_train=True):
        plain, with_crop = build_detr_augmentations(cfg, is_train)
        ret = {
            "is_train": is_train,
            "augmentations": plain,
            "crop_augmentations": with_crop,
            "image_format": cfg.INPUT.FORMAT,
        }
        if not is_train:
            return ret
        ret["photometric"] = build_photometric_augmentations(cfg)
        cp = cfg.INPUT.COPY_PASTE
        if cp.ENABLED:
            if not 0 <= cp.PROB <= 1 or len(cp.SCALE) != 2 or not 0 < cp.SCALE[0] <= cp.SCALE[1]:
                raise ValueError(
                    "INPUT.COPY_PASTE: PROB must be in [0, 1] and SCALE (lo, hi) with "
                    f"0 < lo <= hi, got {cp.PROB} and {cp.SCALE}"
                )
            if cp.MAX_OBJECTS < 1:
                raise ValueError(f"INPUT.COPY_PASTE.MAX_OBJECTS must be >= 1, got {cp.MAX_OBJECTS}")
            pool = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
            ret.update(
                copy_paste_pool=pool,
                copy_paste_prob=cp.PROB,
                copy_paste_scale=cp.SCALE,
                copy_paste_max_objects=cp.MAX_OBJECTS,
            )
        return ret

    def _choose(self):
        if self.crop_augmentations is not None and np.random.rand() < self.crop_prob:
            return self.crop_augmentations
        return self.augmentations

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self._choose()(aug_input) if self.is_train else self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return dataset_dict
        if "pan_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"{dataset_dict['file_name']}: record has no 'pan_seg_file_name'; the DETR "
                "panoptic mapper needs a COCO-panoptic dataset (register_panoptic_dataset)"
            )
        pan_rgb = utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")
        if pan_rgb.shape[:2] != (dataset_dict["height"], dataset_dict["width"]):
            raise ValueError(
                f"panoptic PNG of {dataset_dict['file_name']} has size {pan_rgb.shape[:2]}, "
                f"the image {(dataset_dict['height'], dataset_dict['width'])}"
            )
        pan_ids = rgb2id(transforms.apply_segmentation(pan_rgb))
        segments = dataset_dict.pop("segments_info")
        if self.copy_paste_pool and np.random.rand() < self.copy_paste_prob:
            image, pan_ids, segments = self.copy_paste(image, pan_ids, segments)
        if self.photometric is not None:
            aug_input = T.AugInput(image)
            self.photometric(aug_input)
            image = aug_input.image
        if self.copy_paste_pool or self.photometric is not None:
            dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["instances"] = self.panoptic_instances(pan_ids, segments, image.shape[:2])
        return dataset_dict

    def copy_paste(self, image, pan_ids, segments):
        """Paste thing segments of a random pool record onto ``image`` / ``pan_ids``."""
        src = self.copy_paste_pool[np.random.randint(len(self.copy_paste_pool))]
        src_image = utils.read_image(src["file_name"], format=self.image_format)
        src_ids = rgb2id(utils.read_image(src["pan_seg_file_name"], "RGB"))
        choice = draw_paste(
            _things(src), src_ids, pan_ids.shape, self.copy_paste_scale,
            self.copy_paste_max_objects,
        )  # fmt: skip
        src_image, src_ids = transform_source(src_image, src_ids, choice["scale"], choice["flip"])
        return paste_segments(
            image, pan_ids, segments, src_image, src_ids, choice["segments"], choice["offset"]
        )

    @staticmethod
    def panoptic_instances(pan_ids, segments_info, image_size):
        """
        Args:
            pan_ids: (H, W) int array of panoptic segment ids (augmented).
            segments_info: list of dicts with "id", "category_id" (contiguous), "iscrowd".
            image_size: (H, W).
        Returns:
            Instances with gt_classes (N,), gt_masks BitMasks (N, H, W), gt_boxes (N, 4) xyxy.
        """
        classes, masks = [], []
        for seg in segments_info:
            if seg.get("iscrowd", 0):
                continue
            mask = pan_ids == seg["id"]
            if not mask.any():  # cropped away (or absent from the PNG)
                continue
            classes.append(seg["category_id"])
            masks.append(mask)
        instances = Instances(image_size)
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        if masks:
            bitmasks = BitMasks(torch.from_numpy(np.ascontiguousarray(np.stack(masks))))
        else:
            bitmasks = BitMasks(torch.zeros((0, *image_size), dtype=torch.bool))
        instances.gt_masks = bitmasks
        instances.gt_boxes = bitmasks.get_bounding_boxes() if masks else Boxes(torch.zeros(0, 4))
        return instances


def _things(record):
    """Non-crowd thing segments of a panoptic record."""
    return [
        s
        for s in record.get("segments_info", ())
        if s.get("isthing", True) and not s.get("iscrowd")
    ]
