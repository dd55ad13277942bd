"""Untrusted Markdown (task guidelines, model outputs) as HTML a rater can read and nothing can run in.

markdown-it-py with raw HTML off: tags in the text come out escaped, link targets
with script schemes are refused by its link validator, and the page's
Content-Security-Policy blocks scripts and remote images on top.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markupsafe import Markup

_MD = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])


def markdown(text: str) -> Markup:
    return Markup(_MD.render(text or ""))
