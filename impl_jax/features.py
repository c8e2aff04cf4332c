"""The features the JAX twin computes (names: spec/features.py): each is checked against the
golden by tests/jax (tests/strategies.py draws every one of them)."""

from lmref.spec.features import CORE, declare

FEATURES = declare(*CORE)
