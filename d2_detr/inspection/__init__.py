"""
Inspection-grade output: defect measurements (``measure``), severity grades (``severity``) and
the report files (``report``: CSV/JSON, ``html``: report.html).
"""

from .measure import KINDS, measure_defect
from .report import DefectReport, defects_from_panoptic
from .severity import DEFAULT_SEVERITY_YAML, grade_defect, load_severity, worst_grade

__all__ = [
    "KINDS",
    "measure_defect",
    "DefectReport",
    "defects_from_panoptic",
    "DEFAULT_SEVERITY_YAML",
    "grade_defect",
    "load_severity",
    "worst_grade",
]
