"""``python -m embdim`` (and ``torchrun ... -m embdim``): the command line."""

import sys

from embdim.cli import main

sys.exit(main())
