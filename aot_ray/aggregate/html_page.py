"""report.html: the report's markdown (`text.markdown`) rendered by markdown-it-py into one self-contained page,
every figure inline as a data URI and the style in the page, so that it fetches nothing and MLflow's artifact
viewer previews the whole report, figures and tables, as one file."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

MIME = {".png": "image/png", ".svg": "image/svg+xml"}

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #1a1a1a; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 12px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d0d0; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; display: block; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def _inline(folder: Path, name: str) -> str | None:
    """A data URI of the figure `name` in `folder` (a plain file name only), None when there is none."""
    path = folder / name
    if "/" in name or path.suffix not in MIME or not path.is_file():
        return None
    return f"data:{MIME[path.suffix]};base64,{base64.b64encode(path.read_bytes()).decode()}"


def page(markdown_text: str, folder: Path, title: str) -> str:
    """The markdown as a complete HTML page, its images (relative to `folder`) inline. Raw HTML in the markdown
    is escaped, never passed through: the text holds names a sweep's YAML chose."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def src(m: re.Match) -> str:
        uri = _inline(folder, html.unescape(m.group(1)))
        return f'src="{uri}"' if uri else m.group(0)

    body = re.sub(r'src="([^"]+)"', src, body)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n")
