"""The features the JAX twin computes (names: spec/features.py): each is checked against the
golden by tests/jax: tests/strategies.py draws the CORE ones (Gemma's, Qwen 3's and OLMo 2's
knobs also by tests/jax/test_issue11_features.py, in float64), tests/jax/test_moe.py the
mixtures of experts (MOE), tests/jax/test_llama4.py Llama 4's attention (LLAMA4: the
weightless "l2" QK norm after the RoPE, the NoPE layers' query temperature),
tests/jax/test_vision.py LLaVA's image pathway (VISION: the CLIP tower, the projector, the merge)."""

from lmref.spec.features import CORE, LLAMA4, VISION, declare

FEATURES = declare(*CORE, *LLAMA4, *VISION)
