"""``python -m bayescale``: the same as the ``bayescale`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
