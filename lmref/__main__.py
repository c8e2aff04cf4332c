"""`python -m lmref ARGS` is `lmref ARGS` (handy under torchrun: `torchrun ... -m lmref train ARGS`)."""

import sys

from lmref.cli import main

sys.exit(main())
