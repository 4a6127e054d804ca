"""Benchmark scripts (run as modules: python -m benchmarks.NAME)."""

import d2_detr.compat  # noqa: F401  (before any torchvision / detectron2 import)
