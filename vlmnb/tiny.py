"""``python -m vlmnb.tiny FAMILY DIR`` (and ``--list``): see :mod:`vlmnb.cli.tiny`."""
from vlmnb.cli.tiny import main

if __name__ == "__main__":
    raise SystemExit(main())
