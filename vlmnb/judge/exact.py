"""The exact judge for the toy "shapes" scenes, whose object vocabulary is closed."""
from __future__ import annotations

from vlmnb.judge.result import JudgeResult, score

__all__ = ["ExactJudge"]


class ExactJudge:
    """Exact matching for the toy "shapes" scenes, whose object vocabulary is closed.

    Delegates extraction and matching to ``vlmnb.toy.metrics.match_objects`` (objects are
    colour + shape names, counted as multisets: two red circles are two objects) and recomputes
    the scores with :func:`~vlmnb.judge.result.score`. F1 equals the toy module's in every case;
    precision/recall follow this package's conventions when one side is empty.
    """

    name = "exact"
    model = "toy-vocabulary"
    version = "1"

    def compare(self, original: str, modified: str) -> JudgeResult:
        """Judge one pair of toy descriptions."""
        # imported here so that `import vlmnb.judge` does not load the toy scene generator
        from vlmnb.toy.metrics import match_objects

        m = match_objects(original, modified)
        result = score(m.original_objects, m.modified_objects, m.matched, self.name, dedupe=False)
        if (result.tp, result.fp, result.fn) != (m.tp, m.fp, m.fn):
            raise RuntimeError(
                f"toy matcher counts {(m.tp, m.fp, m.fn)} disagree with its own lists "
                f"{(result.tp, result.fp, result.fn)}: fix vlmnb.toy.metrics.match_objects")
        return result

    def __repr__(self) -> str:
        return "ExactJudge()"
