"""Sphinx extension: drop duplicate <script> entries from each page.

sphinx-thebe 0.3 (pulled in by Jupyter Book 1) registers its inline configuration script on every
`env-before-read-docs` event, which fires twice in a Jupyter Book build, so each page declared
`const THEBE_JS_URL` twice and browsers raised "Identifier 'THEBE_JS_URL' has already been
declared". tests/test_browser.py fails on any such JavaScript error.
"""

from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree):  # noqa: ANN001 - Sphinx's signature
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # the same script is registered once with filename None and once with "": treat as equal
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):  # noqa: ANN001
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
