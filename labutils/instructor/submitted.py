"""The outputs a student submitted, shown in the report as data (``grade --no-execute``): never rendered, never run.

Without re-running, a report can only show what the submitted file says its cells printed. That is the
student's own file: its outputs may be edited by hand, hold HTML or scripts, or print a forged ``PASS``.
So every output is shown as escaped text under a label that says so; HTML, SVG, JavaScript and
widget outputs appear as their source text; a PNG or JPEG is shown only when its data is plain base64
(an ``<img>`` of such data runs nothing). The points never come from here: the scorers decide them.
"""

from __future__ import annotations

import html
import re
from typing import Any

LABEL = ("Outputs as submitted: produced on the student's own machine and NOT re-run by the grader "
         "(graded with --no-execute). They may have been edited: a PASS printed here proves nothing; the points "
         "above come from the grader's scoring alone.")
TEXT_CAP = 20_000  # characters of text shown per cell
IMAGE_CAP = 2_000_000  # characters of base64 per image
FIGURES = 60  # images shown per notebook


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return str(value) if value is not None else ""


def _cut(text: str, limit: int = TEXT_CAP) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters not shown]"


def outputs_html(nb: Any) -> str:
    """The submitted notebook's outputs, cell by cell, escaped and labelled ('' if it holds none)."""
    e = html.escape
    cells = nb.get("cells") if isinstance(nb, dict) else None
    parts, figures = [], 0
    for n, cell in enumerate(cells if isinstance(cells, list) else []):
        outputs = cell.get("outputs") if isinstance(cell, dict) and cell.get("cell_type") == "code" else None
        if not isinstance(outputs, list) or not outputs:
            continue
        shown = []
        for out in outputs:
            if not isinstance(out, dict):
                continue
            kind = out.get("output_type")
            if kind == "stream":
                shown.append(f"<pre class='submitted'>{e(_cut(_text(out.get('text'))))}</pre>")
            elif kind == "error":
                error = f"{_text(out.get('ename'))}: {_text(out.get('evalue'))}"
                shown.append(f"<pre class='submitted'>{e(_cut(error))}</pre>")
            elif kind in ("display_data", "execute_result") and isinstance(out.get("data"), dict):
                data = out["data"]
                image = next((m for m in ("image/png", "image/jpeg") if m in data), None)
                raw = "".join(_text(data[image]).split()) if image else ""
                if image and raw and len(raw) <= IMAGE_CAP and re.fullmatch(r"[A-Za-z0-9+/=]+", raw) \
                        and figures < FIGURES:
                    figures += 1
                    shown.append(f"<figure><img src='data:{image};base64,{raw}' alt='submitted figure of cell "
                                 f"{n + 1}'><figcaption>cell {n + 1}, as submitted</figcaption></figure>")
                for mime in sorted(m for m in data if not str(m).startswith("image/png")
                                   and not str(m).startswith("image/jpeg")):
                    label = "" if mime == "text/plain" else f"[{e(str(mime))}, shown as text, not rendered]\n"
                    shown.append(f"<pre class='submitted'>{label}{e(_cut(_text(data[mime])))}</pre>")
        if shown:
            parts.append(f"<h4>cell {n + 1} (as submitted)</h4>" + "".join(shown))
    if not parts:
        return ""
    return (f"<h3>Outputs as submitted</h3><p class='flag'>{e(LABEL)}</p>" + "\n".join(parts))
