"""A small Sphinx extension that keeps the book working from local files.

sphinx-thebe registers its configuration script once per read pass, and Jupyter Book's
build reads twice, so every page declared ``const THEBE_JS_URL`` twice (a console error).
We drop repeated inline scripts (their filename is None or '' depending on who added them). The book has no live kernels, so nothing else of thebe is needed.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {}) or {}
        key = (getattr(script, "filename", None) or "", attributes.get("body", ""))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

