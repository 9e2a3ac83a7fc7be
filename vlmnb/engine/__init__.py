"""The engine: loading a model, preparing inputs with token spans and image geometry, the
registered attention function, knockouts, recording, shared-prefix sweeps and compressed contexts."""
