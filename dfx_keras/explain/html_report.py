"""``predict --report=FILE``: one self-contained HTML page a person reads.

No server and no external file: thumbnails and heatmaps are embedded as ``data:`` URIs, the
style is inline. Each input is one table row (``<tr class="prediction">``) whose cells carry
their CSV column name (``data-column``) and hold exactly the CSV's text, so the page and the
CSV can be checked against each other.
"""

from __future__ import annotations

import base64
import datetime
import html
from typing import Mapping, Sequence

from dfx_keras.workdir import atomic_write


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.file { min-width: 14em; max-width: 28em; word-break: break-all; font-family: monospace; font-size: 90%; }
tr.explanation td { border-bottom: 2px solid #999; }
tr.fake td.is_fake { color: #b00020; font-weight: bold; }
tr.real td.is_fake { color: #1b5e20; font-weight: bold; }
td.error { color: #b00020; }
img.thumbnail { max-width: 128px; max-height: 128px; }
img.heatmap { max-width: 100%; }
.bar { display: inline-block; height: 8px; background: #1565c0; vertical-align: middle; margin-left: 4px; }
"""

NUMBER_COLUMNS = ("fake_score", "base_dm", "base_gan", "base_real", "p_dm_generated", "p_gan_generated", "p_real")
BAR_COLUMNS = NUMBER_COLUMNS[:4]


def _image(png: bytes | None, css_class: str, alt: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(column: str, value: str) -> str:
    css = "number" if column in NUMBER_COLUMNS else column
    bar = ""
    if column in BAR_COLUMNS and value:
        bar = f'<span class="bar" style="width:{round(float(value) * 60)}px"></span>'
    return f'<td class="{css}" data-column="{column}">{html.escape(value)}{bar}</td>'


def render(rows: Sequence[Mapping[str, str]], columns: Sequence[str], thumbnails: Mapping[str, bytes],
           heatmaps: Mapping[str, bytes], title: str, notes: Sequence[str] = ()) -> str:
    """The page: ``rows`` are CSV rows as dicts (``file`` first), shown in ``columns`` order, with
    each file's thumbnail and, when given, its heatmap figure in a full-width row below it."""
    header = "".join(f"<th>{html.escape(c)}</th>" for c in ("image", *columns))
    body = []
    for row in rows:
        file = html.escape(row["file"])
        decision = {"true": "fake", "false": "real"}.get(row.get("is_fake", ""), "")
        cells = [f"<td>{_image(thumbnails.get(row['file']), 'thumbnail', row['file'])}</td>",
                 *(_cell(c, row.get(c, "")) for c in columns)]
        body.append(f'<tr class="prediction {decision}" data-file="{file}">{"".join(cells)}</tr>')
        if heatmaps.get(row["file"]):
            figure = _image(heatmaps[row["file"]], "heatmap", "Grad-CAM of " + row["file"])
            body.append(f'<tr class="explanation" data-file="{file}"><td colspan="{len(columns) + 1}">{figure}</td></tr>')
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    notes_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{notes_html}"
            f"<p>Made {created}.</p>"
            f"<table><thead><tr>{header}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></body></html>\n")


def write(path: str, rows: Sequence[Mapping[str, str]], columns: Sequence[str], thumbnails: Mapping[str, bytes],
          heatmaps: Mapping[str, bytes], title: str, notes: Sequence[str] = ()) -> str:
    """Write the page atomically; returns ``path``."""
    atomic_write(path, render(rows, columns, thumbnails, heatmaps, title, notes))
    return path
