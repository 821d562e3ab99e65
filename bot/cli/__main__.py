"""`python -m bot.cli`: the same as the `kvm-digest` script."""

import sys

from bot.cli import main

sys.exit(main())
