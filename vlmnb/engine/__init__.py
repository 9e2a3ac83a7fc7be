"""The engine: loading a model, preparing inputs with token spans and image geometry, the
registered attention function, knockouts, recording, shared-prefix sweeps and compressed contexts.

Modules, each importing only those listed before it:

* :mod:`~vlmnb.engine.geometry` (token boxes and the geometry toolkit), :mod:`~vlmnb.engine.tinykit`
  (parts of tiny models), :mod:`~vlmnb.engine.families` (the registry: one module per model
  family), :mod:`~vlmnb.engine.topk` (the paper's top-k ranking);
* :mod:`~vlmnb.engine.spans` (``prepare``: spans + geometry), :mod:`~vlmnb.engine.knockout`,
  :mod:`~vlmnb.engine.record`, :mod:`~vlmnb.engine.tiny`, :mod:`~vlmnb.engine.loading`;
* :mod:`~vlmnb.engine.attention` (the registered function and the one swap/restore context),
  :mod:`~vlmnb.engine.sharedkv` (caches sharing an image prefix), :mod:`~vlmnb.engine.intervention`;
* :mod:`~vlmnb.engine.vlm` (``VLM``, ``load``), then :mod:`~vlmnb.engine.batched` and
  :mod:`~vlmnb.engine.compress`, which take a ``VLM`` and use its public methods.
"""
