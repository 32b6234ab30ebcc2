"""`python -m server`: central pretraining, evaluation and ensembles of bone-age models."""

import sys

from server.cli import main

if __name__ == "__main__":
    sys.exit(main())
