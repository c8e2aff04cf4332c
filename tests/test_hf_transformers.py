"""The converters against transformers itself (needs torch and transformers; nothing is downloaded).

Tiny randomly initialised transformers models, built from config objects, are converted to
lmref; the float64 golden's logits must match transformers' float32 logits within the
conformance float32 row, and conversions back must give the HF files bit for bit.
tests/test_hf_adapter.py runs transformers through the conformance suite (`--impl hf`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from lmref import impl_numpy  # noqa: E402
from lmref.conformance.metrics import compare, gate  # noqa: E402
from lmref.conformance.tolerances import DEFAULT_ROWS  # noqa: E402
from lmref.convert import from_hf, to_hf  # noqa: E402
from lmref.impl_numpy.alibi import alibi_bias, alibi_slopes  # noqa: E402

F32 = DEFAULT_ROWS["float32"]
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500_000.0}
SMALL = dict(vocab_size=97, bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA = dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128, rms_norm_eps=1e-5, **SMALL)
OLMO = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, **SMALL)
MPT = dict(d_model=96, n_layers=2, max_seq_len=128, **SMALL)
GEMMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, head_dim=24, max_position_embeddings=128,
             **SMALL)
# Gemma 3: three sliding layers (window 7) then a global one; local theta 1e4, global 1e6 scaled by 8
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
GEMMA3_LAYERS = ["sliding_attention"] * 3 + ["full_attention"]

# name -> (config class, model class, config kwargs)
MODELS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=48, n_layer=2, n_head=3, n_positions=64, **SMALL)),
    "gpt2-untied": ("GPT2Config", "GPT2LMHeadModel",
                    dict(n_embd=48, n_layer=2, n_head=3, n_positions=64, tie_word_embeddings=False, **SMALL)),
    "llama-gqa-untied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, **LLAMA)),
    "llama3.1-scaling-tied": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True, **LLAMA)),
    "llama-mqa-biases-head_dim-24": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=1, head_dim=24, attention_bias=True, mlp_bias=True, **LLAMA)),
    "olmo-clip-untied": ("OlmoConfig", "OlmoForCausalLM", dict(clip_qkv=1.5, **OLMO)),
    "olmo-tied": ("OlmoConfig", "OlmoForCausalLM", dict(tie_word_embeddings=True, **OLMO)),
    "mpt-6-heads": ("MptConfig", "MptForCausalLM", dict(n_heads=6, **MPT)),
    "mpt-12-heads-untied-clip": ("MptConfig", "MptForCausalLM",
                                 dict(n_heads=12, tie_word_embeddings=False, attn_config={"clip_qkv": 1.0}, **MPT)),
    # a window of 7 keys over 40 tokens; without a window (v0.3)
    "mistral-window-7": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=7, **LLAMA)),
    "mistral-no-window": ("MistralConfig", "MistralForCausalLM",
                          dict(num_key_value_heads=2, sliding_window=None, rope_parameters={"rope_type": "default",
                                                                                          "rope_theta": 1e6}, **LLAMA)),
    # Qwen's rule: layers from max_window_layers = 1 on slide; Qwen2.5's released form: none
    "qwen2-window-from-layer-1": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        num_key_value_heads=2, use_sliding_window=True, sliding_window=7, max_window_layers=1, **LLAMA)),
    "qwen2-no-window-tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        num_key_value_heads=2, sliding_window=7, tie_word_embeddings=True, **LLAMA)),
    "qwen3-biases-head_dim-24": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        num_key_value_heads=2, head_dim=24, attention_bias=True, **LLAMA)),
    "olmo2-gqa": ("Olmo2Config", "Olmo2ForCausalLM", dict(num_key_value_heads=2, rms_norm_eps=1e-6, **OLMO)),
    # the released configs' hidden_act "gelu", read as the tanh GELU
    "gemma-mqa-gelu": ("GemmaConfig", "GemmaForCausalLM", dict(
        num_hidden_layers=2, num_key_value_heads=1, hidden_act="gelu", **GEMMA)),
    "gemma2-softcaps-query-scale-18": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        num_hidden_layers=2, num_key_value_heads=2, sliding_window=7, query_pre_attn_scalar=18,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0, **GEMMA)),
    "gemma3-local-global": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_hidden_layers=4, num_key_value_heads=2, sliding_window=7, layer_types=GEMMA3_LAYERS,
        rope_parameters=GEMMA3_ROPE, query_pre_attn_scalar=18, final_logit_softcapping=3.0, **GEMMA)),
}


def _randomise(model, seed: int) -> None:
    """Weights at the golden's scale (spec/params.py): transformers' std-0.02 init leaves the
    attention nearly uniform, where a RoPE or ALiBi mistake would hardly show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "wte" not in name and "embed" not in name and "wpe" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(min(p.shape)))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "norm" in name or ".ln_" in name:  # Gemma's (1 + w) norms then scale by about 2
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module", params=sorted(MODELS))
def hf_model(request, tmp_path_factory):
    """(name, model in eval mode, its save_pretrained directory)."""
    config_cls, model_cls, kwargs = MODELS[request.param]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))
    _randomise(model, seed=1)
    directory = tmp_path_factory.mktemp(request.param)
    model.eval().save_pretrained(directory)
    return request.param, model, directory


def _tokens(vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, size=(2, 40))  # 40 > 2x llama3's 16 original positions


def test_golden_matches_transformers_logits(hf_model):
    name, model, directory = hf_model
    config, params = from_hf(directory)
    tokens = _tokens(config.vocab_size)
    with torch.no_grad():
        hf_logits = model(input_ids=torch.from_numpy(tokens)).logits.numpy()
    golden = impl_numpy.forward(config, {k: v.astype(np.float64) for k, v in params.items()}, tokens)
    assert gate(compare(hf_logits, golden, F32), F32) == [], name
    assert np.std(golden) > 0.5  # the weights are at a scale where every component matters


def test_hf_to_lmref_to_hf_is_exact(hf_model, tmp_path):
    name, model, directory = hf_model
    config, params = from_hf(directory)
    to_hf(config, params, tmp_path)
    original, exported = load_file(directory / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key
    assert _numeric_fields(tmp_path) == _numeric_fields(directory)


def _numeric_fields(directory) -> dict:
    """The config as transformers reads it, minus what never changes the numbers."""
    skip = {"_name_or_path", "transformers_version", "architectures", "lmref_name", "bos_token_id",
            "eos_token_id", "pad_token_id", "dtype", "output_attentions", "output_hidden_states",
            # qwen: layer_types, which transformers follows, is compared; max_window_layers only derives it
            "max_window_layers"}
    data = transformers.AutoConfig.from_pretrained(directory).to_dict()
    if "attn_config" in data:
        data["attn_config"] = {k: v for k, v in data["attn_config"].items() if k not in skip}
    return {k: v for k, v in data.items() if k not in skip}


def test_lmref_export_loads_in_transformers_and_agrees(hf_model, tmp_path):
    """A float64 export loads as a float64 model.  It agrees within the float32 row, not the
    float64 one: transformers builds RoPE frequencies and cos/sin (`inv_freq` is float32),
    MPT's ALiBi tensor and OLMo's LayerNorm in float32 whatever the model's dtype."""
    name, model, directory = hf_model
    config, params = from_hf(directory)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    to_hf(config, params64, tmp_path)  # float64 weights, as the golden holds them
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.dtype == torch.float64
    tokens = _tokens(config.vocab_size)
    with torch.no_grad():
        logits = loaded(input_ids=torch.from_numpy(tokens)).logits.numpy()
    assert gate(compare(logits, impl_numpy.forward(config, params64, tokens), F32), F32) == [], name


def test_bf16_and_sharded_files_read_like_the_float32_file(tmp_path):
    _, model_cls, kwargs = MODELS["llama-gqa-untied"]
    model = getattr(transformers, model_cls)(transformers.LlamaConfig(**kwargs)).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _, params = from_hf(tmp_path / "sharded")
    model.float().save_pretrained(tmp_path / "single")
    _, reference = from_hf(tmp_path / "single")
    assert all(params[k].dtype == np.float32 and np.array_equal(params[k], reference[k]) for k in reference)


@pytest.mark.parametrize("n_heads", [*range(1, 17), 20, 24, 32, 40, 48, 64])
@pytest.mark.parametrize("max_bias", [8.0, 4.0])
def test_mpt_alibi_is_the_goldens_up_to_a_per_row_constant(n_heads, max_bias):
    """transformers pads the head count to a power of two and interleaves (`build_mpt_alibi_tensor`);
    the golden takes the slopes of 2^floor(log2 n) heads, then every other slope of twice as many:
    the same slopes.  Its bias s * (k - (L - 1)) differs from the golden's -s * (q - k) by a
    constant per query row, which softmax ignores."""
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    length = 12
    hf = build_mpt_alibi_tensor(n_heads, length, alibi_bias_max=max_bias).numpy()[:, 0, :]  # [H, L]
    slopes = alibi_slopes(n_heads, max_bias)
    np.testing.assert_allclose(-hf[:, -2], slopes, rtol=1e-6, atol=0)  # key L-2 is one step back
    ours = alibi_bias(slopes, np.arange(length), np.arange(length))  # [H, Lq, Lk]
    shift = ours - hf[:, None, :]  # [H, Lq, Lk]: must not depend on the key
    np.testing.assert_allclose(shift, shift[:, :, :1].repeat(length, axis=2), rtol=0, atol=1e-4)


def test_transformers_loss_is_the_goldens_mean_next_token_cross_entropy(tmp_path):
    config_cls, model_cls, kwargs = MODELS["mpt-6-heads"]
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))
    _randomise(model, seed=2)
    model.eval().save_pretrained(tmp_path)
    config, params = from_hf(tmp_path)
    tokens = _tokens(config.vocab_size)
    ids = torch.from_numpy(tokens)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    logits, targets = out.logits[:, :-1].reshape(-1, config.vocab_size), ids[:, 1:].reshape(-1)
    by_hand = torch.nn.functional.cross_entropy(logits, targets)
    assert float(out.loss) == pytest.approx(float(by_hand), rel=1e-6)  # mean over B * (S - 1) targets
    golden = impl_numpy.loss(config, {k: v.astype(np.float64) for k, v in params.items()}, tokens)
    assert abs(float(out.loss) - golden) <= F32.loss_atol + F32.loss_rtol * abs(golden)


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "olmo", "mpt", "mistral", "qwen2", "qwen3", "olmo2",
                                        "gemma", "gemma2", "gemma3_text", "mixtral", "dbrx", "qwen2_moe",
                                        "qwen3_moe", "olmoe", "llama4_text", "gptj", "gpt_neox", "phi",
                                        "falcon", "bloom", "phi3"])
def test_a_config_json_without_fields_means_the_class_defaults(model_type):
    """lmref reads a field a config.json leaves out as transformers' class default: the config of
    `{"model_type": T}` equals the config of transformers' full default config of that type."""
    from lmref.convert import config_from_hf

    full = transformers.AutoConfig.for_model(model_type).to_dict()
    assert config_from_hf({"model_type": model_type}, "x") == config_from_hf(full, "x")
