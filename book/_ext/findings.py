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
        for path in sorted(folder.glob("*/claims.csv")):
            env.note_dependency(str(path))  # a chapter run again redraws this page
        return [nodes.raw("", summary_html(collect(folder)), format="html")]


def setup(app):
    app.add_directive("findings", Findings)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
