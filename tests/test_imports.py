"""The package and Detectron2 import together on today's stack."""

import subprocess
import sys


def test_package_imports_in_fresh_interpreter():
    """Importing the package registers the meta-architecture, the backbone, the datasets and the
    config keys, and the training tools' modules import with it."""
    code = (
        "import d2_detr, detectron2.modeling, detectron2.engine, detectron2.evaluation;"
        "import torchvision;"
        "from detectron2.config import get_cfg;"
        "from detectron2.data import DatasetCatalog;"
        "from detectron2.modeling import META_ARCH_REGISTRY, BACKBONE_REGISTRY;"
        "import d2_detr.engine, d2_detr.checkpoint_conversion, d2_detr.utils.checkpoint_io;"
        "cfg = get_cfg(); d2_detr.add_detr_config(cfg);"
        "assert 'DETR' in cfg.MODEL and 'DETR' in META_ARCH_REGISTRY;"
        "assert 'build_resnet_any_width_backbone' in BACKBONE_REGISTRY;"
        "names = set(DatasetCatalog.list());"
        "assert {'concrete_defects_train_panoptic', 'synthetic_concrete_val_panoptic'} <= names;"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_model_zoo_configs_are_installed():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    assert path.endswith(".yaml")
