"""``python -m labutils``: see labutils/cli.py. Importing this module does nothing (a submission may try)."""

import sys

if __name__ == "__main__":
    from .cli import main

    sys.exit(main())
