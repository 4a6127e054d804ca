"""Which compat patches apply depends on the installed packages, not on the device (issue 12)."""

import json
import subprocess
import sys

PROBE = r"""
import importlib.util, json
import numpy as np
from PIL import Image
before = {
    "numpy": [n for n in ("int", "float", "bool", "object", "str") if n not in np.__dict__],
    "pillow": [n for n in ("LINEAR", "CUBIC", "ANTIALIAS") if not hasattr(Image, n)],
    "d2_ext": importlib.util.find_spec("detectron2._C") is None,
}
import d2_detr.compat as compat
import detectron2.layers  # imports detectron2._C
print(json.dumps({"before": before, "applied": compat.APPLIED,
                  "np_int_is_int": getattr(np, "int", None) is int,
                  "linear": getattr(Image, "LINEAR", None) == Image.Resampling.BILINEAR}))
"""


def test_alias_and_extension_patches_follow_what_is_installed():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    before, applied = probe["before"], probe["applied"]
    expected = [f"numpy.{n}" for n in before["numpy"]] + [
        f"PIL.Image.{n}" for n in before["pillow"]
    ]
    assert [a for a in applied if a.startswith(("numpy.", "PIL."))] == expected
    assert any(a.startswith("detectron2._C") for a in applied) == before["d2_ext"]
    # Detectron2 v0.6 needs these names; after the import they exist whatever was installed.
    assert probe["np_int_is_int"] and probe["linear"]
    # The stack `make install` pins (numpy 1.26, Pillow >= 10, Detectron2 sdist without C++):
    # all three kinds apply, on CPU and GPU machines alike (none depends on torch.cuda).
    assert before["numpy"] and before["pillow"] and before["d2_ext"]
