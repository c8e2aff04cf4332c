"""The features the float64 golden computes (names: spec/features.py)."""

from lmref.spec.features import CORE, MOE, declare

FEATURES = declare(*CORE, *MOE)
