"""Converter defaults, the settings check and the error type of bad raw input."""

from ...utils.cli import UserError
from ..categories import THING_NAMES
from ..panoptic_format import PHOTO_EXTENSIONS

__all__ = [
    "RawDatasetError",
    "DEFAULT_MIN_AREA",
    "DEFAULT_CLASS_PRIORITY",
    "DEFAULT_CLASS_SUFFIXES",
    "DEFAULT_THRESHOLD",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "check_settings",
    "threshold_fraction",
]

#: Components smaller than this many pixels are specks (JPEG noise, stray brush strokes).
DEFAULT_MIN_AREA = 16
#: Overlap resolution order: the first class listed keeps contested pixels.
DEFAULT_CLASS_PRIORITY = ("crack", "rebar", "spall")
#: Mask file-name suffix -> class name.
DEFAULT_CLASS_SUFFIXES = {"crack": "crack", "spall": "spall", "rebar": "rebar"}
#: Mask threshold on the 8-bit scale (128 of 255); see :func:`threshold_fraction`.
DEFAULT_THRESHOLD = 128
#: Photos accepted in RAW/images: the demo's photo formats (one definition, in panoptic_format).
IMAGE_EXTENSIONS = PHOTO_EXTENSIONS
MASK_EXTENSIONS = (".jpg", ".jpeg", ".png")


class RawDatasetError(UserError, ValueError):
    """The raw dataset or the conversion settings are invalid; the message names the file."""


def threshold_fraction(threshold):
    """The mask threshold as a fraction of the mask's type range.

    An ``int`` (or a float above 1) is on the 8-bit scale, 1..255 (128 -> 128/255); a float in
    (0, 1] is the fraction itself (0.5 -> half of the type range; 1.0 -> only the type's maximum).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise RawDatasetError(f"threshold must be a number, got {threshold!r}")
    if isinstance(threshold, float) and 0 < threshold <= 1:
        return float(threshold)
    if not 1 <= threshold <= 255:
        raise RawDatasetError(
            f"threshold must be 1..255 (8-bit scale) or a fraction in (0, 1], got {threshold}"
        )
    return threshold / 255.0


def check_settings(val_fraction, test_fraction, threshold, min_area, class_priority, suffixes):
    """Raise :class:`RawDatasetError` naming the first bad setting."""
    names = set(THING_NAMES)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise RawDatasetError(
            "val_fraction and test_fraction must be in [0, 1) with sum < 1, got "
            f"{val_fraction} and {test_fraction}"
        )
    threshold_fraction(threshold)
    if min_area < 1:
        raise RawDatasetError(f"min_area must be >= 1, got {min_area}")
    if sorted(class_priority) != sorted(names):
        raise RawDatasetError(
            f"class_priority must list each of {sorted(names)} once, got {list(class_priority)}"
        )
    unknown = set(suffixes.values()) - names
    if unknown:
        raise RawDatasetError(
            f"class_suffixes map to unknown classes {sorted(unknown)} (known: {sorted(names)})"
        )
    if not suffixes or any(not s for s in suffixes):
        raise RawDatasetError(f"class_suffixes must be non-empty names, got {suffixes}")
