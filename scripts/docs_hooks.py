"""MkDocs hook (mkdocs.yml, `hooks:`): the docstrings' numpydoc roles (``:func:`name```) read as
code on the site, as `help(name)` reads them as text; mkdocstrings leaves the role's name
in front of the code otherwise."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|meth|mod|class|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub("", html)
