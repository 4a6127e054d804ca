"""The package and Detectron2 import together on today's stack."""

import subprocess
import sys


def test_package_imports_in_fresh_interpreter():
    code = (
        "import d2_detr, detectron2.modeling, detectron2.engine, detectron2.evaluation;"
        "import torchvision;"
        "from detectron2.config import get_cfg;"
        "cfg = get_cfg(); d2_detr.add_detr_config(cfg);"
        "assert cfg.MODEL.DETR.NUM_OBJECT_QUERIES == 100; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_model_zoo_configs_are_installed():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    assert path.endswith(".yaml")
