"""Run a trained DETR panoptic model over images: overlays + defect report."""

import glob
import os

import d2_detr  # noqa: F401  (d2_detr.compat patches before detectron2 imports)

# isort: split
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from d2_detr.report import DefectReport

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def expand_inputs(inputs):
    """Files, folders (their images, sorted) and glob patterns -> sorted unique image paths."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = [
                os.path.join(item, f)
                for f in sorted(os.listdir(item))
                if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(glob.glob(os.path.expanduser(item)))
        if not found:
            raise FileNotFoundError(f"--input {item!r}: no image file, folder or glob match")
        paths.extend(found)
    return list(dict.fromkeys(paths))


def output_metadata(cfg):
    """Metadata of the first test (else train) dataset: class names and colours."""
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        meta = MetadataCatalog.get(name)
        if meta.get("stuff_classes") or meta.get("thing_classes"):
            return meta
    raise ValueError(
        "no dataset in DATASETS.TEST/TRAIN has class names: register the dataset the model "
        "was trained on (its metadata names the classes)"
    )


class PanopticDemo:
    """Predict, draw the panoptic overlay and collect the defect report, one image at a time."""

    def __init__(self, cfg):
        self.predictor = DefaultPredictor(cfg)
        self.metadata = output_metadata(cfg)
        classes = self.metadata.get("stuff_classes") or self.metadata.thing_classes
        self.report = DefectReport(classes, self.metadata.get("thing_classes", classes))

    def run_on_image(self, path):
        """
        Returns:
            predictions (model output dict) and the overlay as an (H, W, 3) RGB uint8 array.
        """
        try:
            image = read_image(path, format="BGR")
        except Exception as e:
            raise ValueError(f"{path}: cannot read the image ({e})") from e
        predictions = self.predictor(image)
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        panoptic_seg = panoptic_seg.to("cpu")
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE)
        overlay = visualizer.draw_panoptic_seg(panoptic_seg, segments_info).get_image()
        self.report.add(os.path.basename(path), panoptic_seg.numpy(), segments_info)
        return predictions, overlay
