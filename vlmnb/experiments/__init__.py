"""The paper's experiments, each on the result store's resumable loop (:mod:`.units`), and the paper's numbers.

Every experiment module has one shape: ``run(vlm, samples, ..., store, ...)`` computes its units
into a :class:`~vlmnb.data.store.ResultStore` and returns the store's rows, ``score(...)`` turns
rows into per-unit scores where a judge or an answer key applies, and ``claims(...)`` checks
the paper's findings on this run (claim, paper, ours, held):

- :mod:`.fractions` (E1, Sec. 4): ``run``, ``claims``;
- :mod:`.sweep` (E2 knockouts, Sec. 4.3-4.4, and top-k pruning, Sec. 5): ``run``, ``score``, ``claims``;
- :mod:`.localize` (fine details, Sec. 4.5; analysis in :mod:`.localization_stats`): ``run``, ``claims``;
- :mod:`.reprompt` (Table 1, Sec. 5): ``run``, ``score``, ``claims``.

The paper's numbers live in :mod:`.paper` only; :mod:`.stats` gives the bootstrap intervals.
"""
