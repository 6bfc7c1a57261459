"""A self-contained HTML page: inline CSS, every picture a base64 ``data:`` URI, no scripts, no external assets.
All text from the run's files is escaped."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Page", "fmt"]

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #1d1d1f;
       max-width: 1160px; margin: 0 auto; padding: 18px 22px 60px; line-height: 1.45; font-size: 15px; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.25em; border-bottom: 2px solid #dde; padding-bottom: 3px; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
.sub { color: #555; font-size: 0.92em; margin: 0 0 0.8em; word-break: break-all; }
nav { background: #f4f5f8; border-radius: 6px; padding: 8px 14px; font-size: 0.92em; display: flex;
      flex-wrap: wrap; gap: 4px 16px; }
nav a { white-space: nowrap; }
table { border-collapse: collapse; margin: 0.4em 0 0.8em; font-size: 0.9em; }
th, td { border: 1px solid #d6d8de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.kv th { width: 14em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 10px 16px; }
.grid.small { grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); }
figure { margin: 0 0 10px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e4e8; background: #fff; }
figcaption { font-size: 0.85em; color: #444; margin-top: 2px; }
.missing { color: #6b4e00; background: #fff8e1; border-left: 4px solid #f0c000; padding: 6px 10px; }
.warn { color: #5a1a00; background: #ffe9dc; border: 2px solid #e0661a; padding: 8px 12px; font-weight: 600; }
.error { color: #8a1010; background: #fdecec; border-left: 4px solid #d33; padding: 6px 10px; }
.note { color: #333; font-size: 0.92em; }
pre { background: #f6f7f9; border: 1px solid #e1e3e8; padding: 8px; overflow-x: auto; font-size: 0.82em; }
details summary { cursor: pointer; color: #2a4d8f; }
"""


def fmt(v: Any) -> str:
    """A value for a table cell (numbers with 4 significant digits; None as a dash)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


class Page:
    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def h1(self, text: str, sub: str = "") -> None:
        self.raw(f"<h1>{esc(text)}</h1>")
        if sub:
            self.raw(f'<p class="sub">{esc(sub)}</p>')

    def section(self, anchor: str, title: str) -> None:
        self.toc.append((anchor, title))
        self.raw(f'<h2 id="{esc(anchor)}">{esc(title)}</h2>')

    def h3(self, text: str) -> None:
        self.raw(f"<h3>{esc(text)}</h3>")

    def p(self, text: str, cls: str = "") -> None:
        self.raw(f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>")

    def missing(self, text: str) -> None:
        self.p(text, "missing")

    def error(self, text: str) -> None:
        self.p(text, "error")

    def warn(self, text: str) -> None:
        """A caveat the reader must not miss (not a failure to draw)."""
        self.p(text, "warn")

    def pre(self, text: str) -> None:
        self.raw(f"<pre>{esc(text)}</pre>")

    def details(self, summary: str, inner_html: str) -> None:
        self.raw(f"<details><summary>{esc(summary)}</summary>{inner_html}</details>")

    @staticmethod
    def img_html(png: bytes, alt: str, caption: str = "") -> str:
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'

    def img(self, png: bytes, alt: str, caption: str = "") -> None:
        self.raw(self.img_html(png, alt, caption))

    def grid(self, items: Sequence[tuple[bytes, str, str]], small: bool = False) -> None:
        """Pictures side by side: ``(png, alt, caption)``; ``small``: three to a row."""
        cls = "grid small" if small else "grid"
        self.raw(f'<div class="{cls}">' + "".join(self.img_html(*it) for it in items) + "</div>")

    @staticmethod
    def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
        """Cells: plain values (formatted, escaped, numbers right-aligned) or ``("html", markup)`` for trusted
        markup built here (links)."""
        def cell(v: Any) -> str:
            if isinstance(v, tuple) and len(v) == 2 and v[0] == "html":
                return f"<td>{v[1]}</td>"
            num = isinstance(v, int | float) and not isinstance(v, bool)
            return f'<td class="num">{esc(fmt(v))}</td>' if num else f"<td>{esc(fmt(v))}</td>"

        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
        c = f' class="{cls}"' if cls else ""
        return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> None:
        self.raw(self.table_html(headers, rows, cls))

    def kv(self, items: Sequence[tuple[str, Any]]) -> None:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in items)
        self.raw(f'<table class="kv"><tbody>{rows}</tbody></table>')

    def render(self) -> str:
        nav = ""
        if self.toc:
            nav = "<nav>" + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in self.toc) + "</nav>"
        body = "\n".join(self.parts)
        # the title first, then the contents, then the sections
        first = body.find("<h2")
        head, rest = (body, "") if first < 0 else (body[:first], body[first:])
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{esc(self.title)}</title><style>{CSS}</style></head>\n<body>\n{head}\n{nav}\n{rest}\n"
                "</body></html>\n")
