"""``python -m lrkit`` — same as the ``lrkit`` command."""
from lrkit.cli import main

if __name__ == "__main__":
    main()
