"""`python -m train ARGS` is `lmref train ARGS` (handy under torchrun: `torchrun ... -m train ARGS`)."""

import sys

from lmref.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
