"""Untrusted text (task guidelines, model outputs) as HTML a rater can read and nothing can run in: the one Jinja
environment for review's pages and reports, and its `markdown` filter.

The environment autoescapes every `.html` template in templates/, since model output is untrusted text.
markdown-it-py runs with raw HTML off: tags in the text come out escaped, link targets
with script schemes are refused by its link validator, and the page's
Content-Security-Policy blocks scripts and remote images on top.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

_MD = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])


def markdown(text: str) -> Markup:
    return Markup(_MD.render(text or ""))


TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                        autoescape=select_autoescape(["html"]))
TEMPLATES.filters["markdown"] = markdown
