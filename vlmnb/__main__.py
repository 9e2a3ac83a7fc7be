"""``python -m vlmnb``: see :mod:`vlmnb.cli.main`."""
from vlmnb.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
