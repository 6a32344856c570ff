"""`python -m nbcluster.cli`: the `nbcluster` command."""

import sys

from .main import main

sys.exit(main())
