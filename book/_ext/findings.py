"""The ``findings`` directive: the table of the paper's findings and where each held, read at
build time from the claims every executed chapter published (``vlmnb.views.findings``)."""
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive

#: where the book runner has the chapters publish their downloads (vlmnb.cli.book: EXTRA_DIR/DOWNLOADS)
DOWNLOADS = Path("book") / "chapters" / "_extra" / "_downloads"


class Findings(Directive):
    has_content = False

    def run(self):
        from vlmnb.views.findings import collect, summary_html

        env = self.state.document.settings.env
        folder = Path(env.srcdir) / DOWNLOADS
        # re-read on every build: chapters that run later publish claims this page has not seen
        docs = getattr(env, "vlmnb_findings_docs", set())
        docs.add(env.docname)
        env.vlmnb_findings_docs = docs
        # the chapters' pages sit in chapters/ beside this page (book/intro)
        return [nodes.raw("", summary_html(collect(folder), link="chapters/"), format="html")]


def _always_outdated(app, env, added, changed, removed):
    return sorted(getattr(env, "vlmnb_findings_docs", set()) - set(removed))


def setup(app):
    app.add_directive("findings", Findings)
    app.connect("env-get-outdated", _always_outdated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
