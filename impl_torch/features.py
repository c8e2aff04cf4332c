"""The features the torch twin computes (names: spec/features.py): each is tested against the
golden by the property tests of tests/torch/ (tests/strategies.py draws them), Gemma's,
Qwen 3's and OLMo 2's knobs also by tests/torch/test_issue11_features.py on fixed tiny
configs, the mixtures of experts (MOE) by tests/torch/test_moe.py (`moe_configs()` and the
tiny MoE presets), Llama 4's attention (LLAMA4: the weightless "l2" QK norm after the RoPE,
the NoPE layers' query temperature) by tests/torch/test_llama4.py on the tiny Llama 4 presets,
LLaVA's image pathway (VISION) by tests/torch/test_vision.py (`vision_configs()`) and the
multimodal golden cases."""

from lmref.spec.features import CORE, LLAMA4, VISION, declare

FEATURES = declare(*CORE, *LLAMA4, *VISION)
