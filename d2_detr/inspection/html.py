"""
``report.html``: one static page that opens from disk (relative links only, no script, no
network): a summary (images, defects per class and grade, units), then one section per image,
worst grade first, with its overlay picture and a table of its defects.
"""

import html
import os
from urllib.parse import quote

from d2_detr.utils.io import atomic_write_text

__all__ = ["write_html_report", "render_html", "TABLE_COLUMNS"]

# (row key, header) of the per-image defect table; mm columns only with a scale.
TABLE_COLUMNS = [
    ("defect_id", "id"),
    ("class", "class"),
    ("grade", "grade"),
    ("score", "score"),
    ("area_px", "area (px)"),
    ("length_px", "length (px)"),
    ("width_max_px", "max width (px)"),
    ("width_mean_px", "mean width (px)"),
    ("orientation_deg", "orientation (deg)"),
]
MM_COLUMNS = [
    ("area_mm2", "area (mm²)"),
    ("length_mm", "length (mm)"),
    ("width_max_mm", "max width (mm)"),
    ("width_mean_mm", "mean width (mm)"),
]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}
td.t,th.t{text-align:left}
section{border-top:2px solid #888;margin-top:1.5em;padding-top:.5em}
img.overlay{max-width:100%;max-height:640px;border:1px solid #999}
.note{background:#fff6d5;padding:.4em .8em;border-left:4px solid #e0b000}
.level3{background:#f8c9c4}.level2{background:#fde2c4}.level1{background:#fff3c4}
"""


def _e(value):
    return html.escape("" if value is None else str(value), quote=True)


def _href(path):
    """A relative path (OS separators) -> a URL-encoded relative link."""
    return quote(path.replace(os.sep, "/"), safe="/")


def _sort_key(im):
    level = im.get("worst_level")
    return (im["status"] != "ok", -(level if level is not None else -1), -im["num_defects"])


def render_html(report):
    """The page of a ``DefectReport`` as a string."""
    totals = report.totals()
    columns = TABLE_COLUMNS + (MM_COLUMNS if report.mm_per_pixel else [])
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Defect report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Defect report</h1>",
        f'<p class="note" id="units">{_e(report.units_note())}</p>',
        '<table id="summary">',
        f"<tr><th class=t>images</th><td>{totals['images']}</td></tr>",
        f"<tr><th class=t>images with defects</th><td>{totals['images_with_defects']}</td></tr>",
        f"<tr><th class=t>unreadable images</th><td>{totals['images_unreadable']}</td></tr>",
        f"<tr><th class=t>defects</th><td>{totals['defects']}</td></tr>",
        "</table>",
        "<h2>Defects per class and grade</h2>",
        '<table id="grades"><tr><th class=t>class</th><th class=t>grade</th><th>count</th></tr>',
    ]
    for cls, n in totals["counts"].items():
        grades = totals["grades"].get(cls) or {"-": n}
        for grade, count in grades.items():
            out.append(
                f"<tr><td class=t>{_e(cls)}</td><td class=t>{_e(grade)}</td><td>{count}</td></tr>"
            )
    out.append("</table>")
    out.append(
        f"<p>Severity thresholds: {_e(report.severity_source)} (a starting point for the "
        "inspector's own code; see defect_report.json).</p>"
    )
    for im in sorted(report.images, key=_sort_key):
        out.append(f'<section class="image" data-image="{_e(im["image"])}">')
        out.append(f"<h2>{_e(im['image'])}</h2>")
        if im["status"] != "ok":
            out.append(f'<p class="note">{_e(im["status"])}: {_e(im["reason"])}</p></section>')
            continue
        out.append(
            f"<p>{im['width']} x {im['height']} px, {im['num_defects']} defect(s), "
            f"worst grade: <b>{_e(im['worst_grade'])}</b></p>"
        )
        if im.get("overlay"):
            out.append(
                f'<p><a href="{_href(im["overlay"])}"><img class="overlay" '
                f'src="{_href(im["overlay"])}" alt="overlay of {_e(im["image"])}"></a></p>'
            )
        if im["defects"]:
            head = "".join(
                f'<th class="{"t" if k in ("class", "grade") else ""}">{_e(h)}</th>'
                for k, h in columns
            )
            out.append(f'<table class="defects"><tr>{head}</tr>')
            for d in im["defects"]:
                level = d.get("grade_level")
                cls = f' class="level{level}"' if level else ""
                cells = "".join(
                    f'<td{" class=t" if k in ("class", "grade") else ""}>{_e(d.get(k))}</td>'
                    for k, _ in columns
                )
                out.append(f'<tr data-defect-id="{_e(d["defect_id"])}"{cls}>{cells}</tr>')
            out.append("</table>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_html_report(report, path):
    """Write ``render_html(report)`` to ``path`` atomically; returns ``path``."""
    atomic_write_text(path, render_html(report))
    return path
