"""Moved to :mod:`d2_detr.inspection.report`; this name stays importable."""

from d2_detr.inspection.report import DEFECT_FIELDS, DefectReport, defects_from_panoptic  # noqa

__all__ = ["DefectReport", "defects_from_panoptic", "DEFECT_FIELDS"]
