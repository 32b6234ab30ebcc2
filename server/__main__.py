"""`python -m server`: central pretraining and evaluation of bone-age models."""

import sys

from server.cli import main

sys.exit(main())
