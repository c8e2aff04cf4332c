"""The features the torch twin computes (names: spec/features.py): each is tested against the
golden by the property tests of tests/torch/ (tests/strategies.py draws every one of them)."""

from lmref.spec.features import CORE, declare

FEATURES = declare(*CORE)
