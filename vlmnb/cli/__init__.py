"""Command lines: the book runner, the sweep command line, ``python -m vlmnb``."""
