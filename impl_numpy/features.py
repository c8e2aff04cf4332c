"""The features the float64 golden computes (names: spec/features.py)."""

from lmref.spec.features import CORE, declare

FEATURES = declare(*CORE)
