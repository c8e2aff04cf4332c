"""The features the float64 golden computes (names: spec/features.py)."""

from lmref.spec.features import CORE, LLAMA4, VISION, declare

FEATURES = declare(*CORE, *LLAMA4, *VISION)
