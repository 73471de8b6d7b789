"""An mkdocs hook: the guide's formulas as MathML, drawn by the browser itself.

`pymdownx.arithmatex` (generic mode) marks each formula of a page: inline ones as
`<span class="arithmatex">\\(...\\)</span>`, displayed ones as
`<div class="arithmatex">\\[...\\]</div>`. This hook converts the LaTeX inside to
MathML with `latex2mathml`, so the site needs no MathJax script and no network:
every current browser renders MathML.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

INLINE = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.DOTALL)
DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.DOTALL)


def on_page_content(content: str, **kwargs) -> str:
    content = DISPLAY.sub(
        lambda m: convert(html.unescape(m.group(1)), display="block"), content)
    return INLINE.sub(lambda m: convert(html.unescape(m.group(1))), content)
