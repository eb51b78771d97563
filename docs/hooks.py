"""MkDocs hook: render the Sphinx roles that pyrovi's numpydoc docstrings use.

mkdocstrings shows ``:func:`pyrovi.to_arviz``` as the literal text ``:func:`` followed by
code.  This hook, run on every page's HTML, turns

* ``:math:`x``` into an arithmatex span that MathJax typesets, and
* ``:func:`` / ``:meth:`` / ``:class:`` / ``:mod:`` / ``:data:`` / ``:attr:`` / ``:exc:`` /
  ``:obj:`` roles into plain code (``~a.b.c`` shows as ``c``, as in Sphinx).

The docstrings themselves are left as they are, so that they keep working with Sphinx
and ``help()``.
"""

from __future__ import annotations

import re

_MATH = re.compile(r":math:<code>(.*?)</code>", re.S)
_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|exc|obj):<code>(~?)([^<]*)</code>")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"<code>{target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    html = _MATH.sub(lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', html)
    return _ROLE.sub(_role, html)
