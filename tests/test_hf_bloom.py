"""BLOOM (convert/models/bloom.py): the fused q | k | v split per head and rejoined bit for bit,
the Hub's unprefixed tensor names, the refusals naming their fields, BLOOM's GELU and ALiBi
positions against transformers' own code, and transformers' own BloomForCausalLM read by lmref
(tests/test_hf_convert.py, test_hf_float64.py and test_hf_transformers4.py run the presets and
the variants of tests/hf_configs.py through the generic checks).
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from lmref import impl_numpy
from lmref.conformance.cases import case_config
from lmref.convert import ConversionError, config_from_hf, from_hf, hf_config, hf_state_dict
from lmref.spec import init_params, tiny

from tests.hf_checkpoints import (assert_captures_are_the_goldens, assert_fused_per_head,
                                  assert_golden_matches_transformers, assert_misshaped_is_named,
                                  assert_same_tensors, assert_split_and_rejoin_exact, edit_config, edit_weights,
                                  hf_dir, real_config, save_randomised, written_back)
from tests.hf_configs import VARIANTS

BLOOM = case_config("bloom-560m")  # d_model 96, 6 heads of 16 (ALiBi's interleaved slopes)
QKV = "transformer.h.1.self_attention.query_key_value"


# --- the fused query_key_value and the embedding LayerNorm ----------------------------------------


def test_query_key_value_holds_each_heads_q_k_v_rows_in_turn():
    """BloomAttention._reshape: `fused_qkv.view(B, S, n_head, 3, head_dim)`, q = [..., 0, :]."""
    params = init_params(BLOOM, 3)
    assert_fused_per_head(BLOOM, params, hf_state_dict(BLOOM, params), QKV)


def test_the_embedding_layernorm_is_embed_norm():
    params = init_params(BLOOM, 3)
    tensors = hf_state_dict(BLOOM, params)
    for leaf in ("weight", "bias"):
        assert np.array_equal(tensors[f"transformer.word_embeddings_layernorm.{leaf}"], params[f"embed.norm.{leaf}"])
    assert "lm_head.weight" not in tensors  # tied


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_split_and_the_rejoin_are_exact(dtype, tmp_path):
    """HF -> lmref -> HF gives the same bits: a checkpoint whose q | k | v were not written by lmref."""
    read = assert_split_and_rejoin_exact(tmp_path, BLOOM, dtype, read_key="layers.1.attn.wq")
    assert read == BLOOM


@pytest.mark.parametrize("key, shape", [(f"{QKV}.weight", (160, 96)), (f"{QKV}.bias", (287,)),
                                        ("transformer.word_embeddings_layernorm.weight", (95,))])
def test_a_fused_tensor_that_does_not_split_into_the_heads_is_named_with_both_sizes(key, shape, tmp_path):
    """A grouped q | k | v ([q + 2 kv] rows), a bias one short of 3 x 6 heads of 16, a norm one short."""
    expected = {"weight": (288, 96), "bias": (288,)}[key.rsplit(".", 1)[1]] if key.startswith(QKV) else (96,)
    assert_misshaped_is_named(hf_dir(tmp_path, BLOOM), key, shape, expected)


def test_the_hubs_unprefixed_names_and_a_stored_tied_head_read_alike(tmp_path):
    """bigscience/bloom-*'s files say `h.0.input_layernorm.weight` for transformers'
    `transformer.h.0...` (and may store the tied head); both read as lmref's own export."""
    hf_dir(tmp_path, BLOOM)
    _, params = from_hf(tmp_path)

    def as_the_hub(t):
        for key in list(t):
            t[key.removeprefix("transformer.")] = t.pop(key)
        t["lm_head.weight"] = t["word_embeddings.weight"].copy()

    edit_weights(tmp_path, as_the_hub)
    assert not any(k.startswith("transformer.") for k in load_file(tmp_path / "model.safetensors"))
    config, back = from_hf(tmp_path)
    assert config == BLOOM and all(np.array_equal(back[k], params[k]) for k in params)


def test_a_tied_head_that_differs_from_the_embedding_is_refused(tmp_path):
    edit_weights(hf_dir(tmp_path, BLOOM), lambda t: t.update({"lm_head.weight": t["transformer.word_embeddings.weight"] + 1}))
    with pytest.raises(ConversionError, match="lm_head.weight differs from transformer.word_embeddings.weight"):
        from_hf(tmp_path)


# --- config.json --------------------------------------------------------------------------------


def test_the_176bs_legacy_spellings_read_as_the_current_ones():
    """bigscience/bloom says n_embed and num_attention_heads (BloomConfig: n_embed -> hidden_size,
    attribute_map num_attention_heads -> n_head); pretraining_tp 4 only acts with slow_but_exact."""
    data = real_config("bigscience--bloom")
    renamed = {k: v for k, v in data.items() if k not in ("n_embed", "num_attention_heads", "pretraining_tp")}
    renamed |= {"hidden_size": data["n_embed"], "n_head": data["num_attention_heads"]}
    assert config_from_hf(data, "x") == config_from_hf(renamed, "x")
    assert (config_from_hf(data, "x").d_model, config_from_hf(data, "x").n_heads) == (14336, 112)


def test_seq_length_is_the_context_and_2048_without_it():
    data = hf_config(VARIANTS["bloom-12-heads-of-8-context-200"])
    assert data["seq_length"] == 200 and config_from_hf(data, "x").max_seq_len == 200
    assert config_from_hf({k: v for k, v in data.items() if k != "seq_length"}, "x").max_seq_len == 2048


def _set(key: str, value):
    return lambda data: data.update({key: value})


REFUSED = [
    (_set("apply_residual_connection_post_layernorm", True),
     "apply_residual_connection_post_layernorm=True is not supported: it makes each sublayer's LayerNorm output"),
    (_set("n_inner", 100), "n_inner=100 is not supported: transformers never reads it: BloomMLP is 4 * hidden_size = "
                           "384 wide"),
    (_set("n_head", 5), "n_head=5 is not supported: must be a positive integer dividing hidden_size (96)"),
    (_set("n_head", 0), "n_head=0 is not supported"),
    (_set("n_embed", 64), "hidden_size=96 is not supported: the same field as n_embed=64"),
    (_set("num_attention_heads", 3), "n_head=6 is not supported: the same field as num_attention_heads=3"),
    (_set("hidden_act", "gelu"), "unknown field(s) hidden_act"),  # BloomConfig has none: the GELU is hard-coded
    (_set("max_position_embeddings", 4096), "unknown field(s) max_position_embeddings"),
    # transformers then drops dense's and dense_4h_to_h's biases (test_slow_but_exact_drops_biases)
    (lambda d: d.update(pretraining_tp=2, slow_but_exact=True), "slow_but_exact=True is not supported: with "
                                                                "pretraining_tp=2 transformers sums F.linear slices"),
    (_set("pretraining_tp", 0), "pretraining_tp=0 is not supported: expected a positive integer"),
]


@pytest.mark.parametrize("edit, named", REFUSED, ids=[named.split(" is")[0].split(":")[0] for _, named in REFUSED])
def test_a_config_json_field_lmref_cannot_represent_is_named(edit, named, tmp_path):
    edit_config(hf_dir(tmp_path, BLOOM), edit)
    with pytest.raises(ConversionError) as info:
        from_hf(tmp_path)
    assert named in str(info.value)


@pytest.mark.parametrize("key, value", [("pretraining_tp", 4), ("slow_but_exact", True), ("hidden_dropout", 0.1),
                                        ("offset_alibi", 100), ("masked_softmax_fusion", False)])
def test_fields_that_never_change_the_numbers_are_read_and_ignored(key, value, tmp_path):
    edit_config(hf_dir(tmp_path, BLOOM), _set(key, value))
    assert from_hf(tmp_path)[0] == BLOOM


INEXPRESSIBLE = {
    "gqa": (dict(n_kv_heads=2), "n_kv_heads: BLOOM attention is multi-head"),
    "head_dim": (dict(head_dim=24), "head_dim: BLOOM derives head_dim = d_model / n_heads"),
    "d_ff": (dict(d_ff=200), "d_ff: transformers' BloomMLP is 4 * d_model = 256 wide"),
    "no-embedding-norm": (dict(embedding_norm=False), "embedding_norm=False (transformers' bloom has True)"),
    "exact-tanh-gelu": (dict(activation="gelu_tanh"), "activation='gelu_tanh' (transformers' bloom has "
                                                      "'gelu_tanh_truncated')"),
    "max-bias-4": (dict(alibi_max_bias=4.0), "alibi_max_bias=4.0 (transformers' bloom has 8.0)"),
    "no-qkv-bias": (dict(qkv_bias=False), "qkv_bias=False (transformers' bloom has True)"),
    "no-norm-bias": (dict(norm_bias=False), "norm_bias=False (transformers' bloom has True)"),
    "rope": (dict(position="rope"), "position='rope' (transformers' bloom has 'alibi')"),
    "parallel": (dict(parallel_residual=True), "parallel_residual=True (transformers' bloom has False)"),
    "head-bias": (dict(lm_head_bias=True, tie_embeddings=False), "lm_head_bias=True (transformers' bloom has False)"),
}


@pytest.mark.parametrize("key", sorted(INEXPRESSIBLE))
def test_a_config_bloom_cannot_express_is_refused_by_name(key):
    changes, named = INEXPRESSIBLE[key]
    with pytest.raises(ConversionError) as info:
        hf_config(tiny("bloom-560m", **changes))
    assert named in str(info.value)


def test_the_truncated_gelu_has_no_transformers_hidden_act_elsewhere():
    """No `hidden_act` names it (ACT2FN's gelu_new and gelu_fast use other constants): a GPT-2 with it is refused."""
    with pytest.raises(ConversionError, match="'gelu_tanh_truncated' has no transformers name"):
        hf_config(tiny("gpt2", activation="gelu_tanh_truncated"))


# --- transformers' own code ---------------------------------------------------------------------


def test_the_goldens_gelu_is_bloom_gelu_forward():
    """transformers' `bloom_gelu_forward` (sqrt(2/pi) written 0.79788456, as Megatron-DeepSpeed's
    `bias_gelu`) in float64 is the golden's gelu_tanh_truncated to rounding; the exact-constant
    tanh GELU differs from both by about 1e-10 relative, which is why no float32 control can
    tell them apart (spec/MATH.md)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lmref.impl_numpy.mlp import gelu_tanh, gelu_tanh_truncated
    from transformers.models.bloom.modeling_bloom import bloom_gelu_forward

    x = np.linspace(-8, 8, 10_001)
    hf = bloom_gelu_forward(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(gelu_tanh_truncated(x), hf, rtol=1e-15, atol=1e-15)
    gap = np.abs(gelu_tanh(x) - hf).max()
    assert 1e-12 < gap < 1e-9


SMALL = dict(vocab_size=97, hidden_size=96, n_layer=2, n_head=6, bos_token_id=None, eos_token_id=None)
MODELS = {
    "6-heads-tied": SMALL,
    "8-heads-untied-eps-1e-6": SMALL | dict(hidden_size=64, n_head=8, tie_word_embeddings=False,
                                            layer_norm_epsilon=1e-6),
    # pretraining_tp without slow_but_exact: never read
    "12-heads-tp-4": SMALL | dict(n_head=12, pretraining_tp=4),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def bloom_model(request, tmp_path_factory):
    """(name, BloomForCausalLM in eval mode, its save_pretrained directory)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp(request.param)
    model = save_randomised(transformers.BloomForCausalLM, transformers.BloomConfig(**MODELS[request.param]), directory)
    return request.param, model, directory


def _golden(config, params, tokens):
    return impl_numpy.forward(config, {k: v.astype(np.float64) for k, v in params.items()}, tokens)


def test_golden_matches_transformers_bloom(bloom_model):
    name, model, directory = bloom_model
    assert_golden_matches_transformers(model, directory, name)


def test_transformers_bloom_round_trips_bit_for_bit(bloom_model, tmp_path):
    from tests.test_hf_transformers import _numeric_fields

    name, _, directory = bloom_model
    _, original, exported = written_back(directory, tmp_path)
    assert_same_tensors(exported, original, name, dtypes=False)
    ours, theirs = _numeric_fields(tmp_path), _numeric_fields(directory)
    # lmref writes pretraining_tp 1 and slow_but_exact false (the same math) and its context
    for key in ("pretraining_tp", "slow_but_exact", "seq_length"):
        ours.pop(key, None), theirs.pop(key, None)
    assert ours == theirs


def test_left_padding_gives_bloom_the_goldens_positions(bloom_model):
    """BLOOM's ALiBi counts real tokens only (`(cumsum(mask) - 1) * mask`): a row behind 5
    padding tokens has, on its real positions, the logits of the unpadded row; lmref's positions
    with padding (cumsum - 1, export/runtime.py) are the same rule (spec/MATH.md, "ALiBi")."""
    import torch

    name, model, directory = bloom_model
    config, params = from_hf(directory)
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, size=(2, 12))
    padded = np.concatenate([np.zeros((2, 5), np.int64), tokens], axis=1)
    mask = np.ones_like(padded)
    mask[1, :5] = 0  # row 1 left-padded; row 0 sees its 5 extra tokens
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(padded), attention_mask=torch.from_numpy(mask)).logits.numpy()
    golden = _golden(config, params, tokens[1:])
    np.testing.assert_allclose(logits[1, 5:], golden[0], rtol=1e-4, atol=1e-4 * np.abs(golden).max())


def test_captures_are_the_goldens():
    """LAYER_MODULES: self_attention.dense, mlp.dense_4h_to_h and the block are what lmref
    captures; transformers' hidden_states[0] is the embedding after its LayerNorm."""
    pytest.importorskip("transformers")
    assert_captures_are_the_goldens(VARIANTS["bloom-untied-eps-1e-6-4-heads"])


def test_slow_but_exact_drops_biases_in_transformers():
    """Why slow_but_exact with pretraining_tp > 1 is refused: transformers 5.23's sliced path is
    the default path with dense's and dense_4h_to_h's biases set to zero, not a reordered sum."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.test_hf_transformers import _randomise

    config = transformers.BloomConfig(**SMALL)
    model = transformers.BloomForCausalLM(config)
    _randomise(model, seed=3)
    sliced = transformers.BloomForCausalLM(transformers.BloomConfig(**SMALL, pretraining_tp=2, slow_but_exact=True))
    sliced.load_state_dict(model.state_dict())
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 97, size=(1, 9)))
    with torch.no_grad():
        differs = (sliced.eval()(input_ids=ids).logits - model.eval()(input_ids=ids).logits).abs().max()
        for block in model.transformer.h:
            block.self_attention.dense.bias.zero_()
            block.mlp.dense_4h_to_h.bias.zero_()
        same = (sliced(input_ids=ids).logits - model(input_ids=ids).logits).abs().max()
    assert differs > 1e-2 and same < 1e-4
