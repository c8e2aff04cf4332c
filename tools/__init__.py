"""Developer tools of the lmref repository (not part of the installed package)."""
