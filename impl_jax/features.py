"""The features the JAX twin computes (names: spec/features.py): each is checked against the
golden by tests/jax (tests/strategies.py draws every one of them; Gemma's, Qwen 3's and
OLMo 2's knobs also by tests/jax/test_issue11_features.py, in float64)."""

from lmref.spec.features import CORE, declare

FEATURES = declare(*CORE)
