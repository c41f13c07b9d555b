import sys

from lladax.cli import main

sys.exit(main())
