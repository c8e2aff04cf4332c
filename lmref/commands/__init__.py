"""The commands of `lmref`, one module per subject; lmref/cli.py registers them."""
