"""``python -m labutils``: see labutils/cli.py."""

import sys

from .cli import main

sys.exit(main())
