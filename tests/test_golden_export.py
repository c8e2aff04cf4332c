"""`lmref golden export` and the GGUF writer (convert/gguf.py): the files an engine outside Python
reads.  The GGUF is read back with gguf.GGUFReader and undone by a small reader written here
(the Q/K order derived by hand), and a "GGUF engine" (the golden on the file's weights, with
interleaved RoPE as GGML rotates) must pass the suite's float32 row."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from lmref import impl_numpy
from lmref.cli import main
from lmref.conformance.runner import FAIL, PASS, run_check
from lmref.conformance.store import GoldenStore
from lmref.convert.errors import ConversionError
from lmref.convert.gguf import GGUF_ARCHS, all_fields, covered_fields, ggml_rotary_rows, gguf_tensors, write_gguf

gguf = pytest.importorskip("gguf", reason="the gguf extra (pip install 'lmref[gguf]') is not installed")


@pytest.fixture(scope="module")
def store() -> GoldenStore:
    return GoldenStore()


def test_ggml_rotary_rows_pair_each_half_dim_with_its_partner(store):
    # head_dim 4: halves pairs (0, 2) and (1, 3); GGML wants the pairs adjacent: 0, 2, 1, 3 per head
    assert ggml_rotary_rows(2, 4).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    # head_dim 8: pairs (0, 4), (1, 5), (2, 6), (3, 7)
    assert ggml_rotary_rows(1, 8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def halves_rows(ggml: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
    """Undo GGML's rotary order, written out: GGML row h*hd + 2j + k is halves row h*hd + k*hd/2 + j."""
    out = np.empty_like(ggml)
    for h in range(n_heads):
        for j in range(head_dim // 2):
            for k in range(2):
                out[h * head_dim + k * head_dim // 2 + j] = ggml[h * head_dim + 2 * j + k]
    return out


def canonical_from_gguf(config, tensors: dict[str, np.ndarray], unpermute: bool) -> dict[str, np.ndarray]:
    """lmref's params back from GGUF tensors: a reader written from gguf's TENSOR_NAMES, not from the writer."""
    p = {"embed.tokens": tensors["token_embd.weight"]}
    if "position_embd.weight" in tensors:
        p["embed.positions"] = tensors["position_embd.weight"]
    names = {"attn_norm": "attn_norm", "ffn_norm": "mlp_norm"}
    for i in range(config.n_layers):
        b, layer = f"blk.{i}.", f"layers.{i}."
        for name, value in tensors.items():
            if not name.startswith(b):
                continue
            part, kind = name[len(b):].rsplit(".", 1)
            if part in names:
                p[f"{layer}{names[part]}.{kind}"] = value
            elif part.startswith("ffn_"):
                p[f"{layer}mlp.{'w' if kind == 'weight' else 'b'}_{part[4:]}"] = value.T if kind == "weight" else value
        p[f"{layer}attn.wo"] = tensors[f"{b}attn_output.weight"].T
        if f"{b}attn_output.bias" in tensors:
            p[f"{layer}attn.bo"] = tensors[f"{b}attn_output.bias"]
        if f"{b}attn_qkv.weight" in tensors:  # rows q, k, v
            for x, w in zip("qkv", np.split(tensors[f"{b}attn_qkv.weight"], 3)):
                p[f"{layer}attn.w{x}"] = w.T
            for x, bias in zip("qkv", np.split(tensors.get(f"{b}attn_qkv.bias", np.zeros(0)), 3)):
                if bias.size:
                    p[f"{layer}attn.b{x}"] = bias
            continue
        q, k = tensors[f"{b}attn_q.weight"], tensors[f"{b}attn_k.weight"]
        if unpermute:
            q, k = halves_rows(q, config.n_heads, config.head_dim), halves_rows(k, config.n_kv_heads, config.head_dim)
        p[f"{layer}attn.wq"], p[f"{layer}attn.wk"], p[f"{layer}attn.wv"] = q.T, k.T, tensors[f"{b}attn_v.weight"].T
    for kind in ("weight", "bias"):
        if f"output_norm.{kind}" in tensors:
            p[f"final_norm.{kind}"] = tensors[f"output_norm.{kind}"]
    if "output.weight" in tensors:
        p["lm_head.weight"] = tensors["output.weight"].T
    return p


def read_gguf(path) -> tuple[dict, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return fields, {t.name: np.array(t.data) for t in reader.tensors}


@pytest.mark.parametrize("arch", ["llama3.1", "gpt2"])
def test_gguf_reads_back_with_the_metadata_and_the_golden_weights(store, tmp_path, arch):
    case = store.load(arch, "prefill-b2-s7")
    config, params = case.config, case.params()
    fields, tensors = read_gguf(write_gguf(config, params, tmp_path / "model.gguf"))
    name = GGUF_ARCHS[config.hf_model_type]
    assert fields["general.architecture"] == name == {"llama3.1": "llama", "gpt2": "gpt2"}[arch]
    assert fields[f"{name}.context_length"] == config.max_seq_len == 1024
    assert fields[f"{name}.attention.head_count"] == config.n_heads
    assert fields[f"{name}.attention.head_count_kv"] == config.n_kv_heads
    assert fields[f"{name}.vocab_size"] == config.vocab_size == 251
    assert fields["tokenizer.ggml.model"] == "none"
    eps_key = "layer_norm_rms_epsilon" if config.norm == "rmsnorm" else "layer_norm_epsilon"
    assert fields[f"{name}.attention.{eps_key}"] == pytest.approx(config.norm_eps, rel=1e-7)
    if config.position == "rope":
        assert fields[f"{name}.rope.freq_base"] == config.rope_theta == 500000.0
    assert all(t.dtype == np.float32 for t in tensors.values())
    back = canonical_from_gguf(config, tensors, unpermute=True)
    assert set(back) == set(params)
    for key, value in params.items():
        np.testing.assert_array_equal(back[key], value.astype(np.float32), err_msg=key)


def test_a_gguf_engine_with_ggml_rotary_passes_and_one_without_the_permutation_fails(store, tmp_path):
    """The golden run on the file's weights as GGML runs them (interleaved pairs) gives the golden's
    logits; the same weights rotated as halves (the permutation forgotten) do not."""
    case = store.load("llama3", "prefill-b2-s7")
    _, tensors = read_gguf(write_gguf(case.config, case.params(), tmp_path / "model.gguf"))
    as_ggml = dataclasses.replace(case.config, rope_layout="interleaved")
    weights = {k: v.astype(np.float64) for k, v in canonical_from_gguf(case.config, tensors, unpermute=False).items()}

    def engine(config):
        return lambda _config, _params, tokens: impl_numpy.forward(config, weights, tokens)

    assert run_check(case, engine(as_ggml), "forward").status == PASS
    assert run_check(case, engine(case.config), "forward").status == FAIL


def test_rope_freqs_follow_the_llama3_formula_of_math_md(store, tmp_path):
    config = store.load("llama3.1", "prefill-b2-s7").config
    _, tensors = read_gguf(write_gguf(config, store.load("llama3.1", "prefill-b2-s7").params(), tmp_path / "m.gguf"))
    s, hd = config.rope_scaling, config.head_dim
    expected = []
    for i in range(hd // 2):  # spec/MATH.md "llama3": the factor divides inv_freq_i
        inv_freq = config.rope_theta ** (-2 * i / hd)
        wavelen, L = 2 * math.pi / inv_freq, s.original_max_seq_len
        if wavelen < L / s.high_freq_factor:
            scaled = inv_freq
        elif wavelen > L / s.low_freq_factor:
            scaled = inv_freq / s.factor
        else:
            smooth = (L / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            scaled = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
        expected.append(inv_freq / scaled)
    np.testing.assert_allclose(tensors["rope_freqs.weight"], expected, rtol=1e-6)
    kinds = {1.0 if e == 1 else s.factor if e == s.factor else "between" for e in expected}
    assert kinds == {1.0, s.factor, "between"}  # the case exercises every branch


def test_every_config_field_is_fixed_carried_or_irrelevant_for_each_mapped_arch():
    for arch in set(GGUF_ARCHS.values()):
        assert covered_fields(arch) == all_fields(), arch


@pytest.mark.parametrize("arch, change, named", [
    ("mistral-7b", {}, "sliding_window=5"),
    ("qwen2-7b", {}, "not mapped to a GGUF architecture yet"),
    ("llama3", {"final_logit_softcap": 30.0}, "final_logit_softcap=30.0"),
    ("mpt", {"alibi_slopes": "geometric"}, "alibi_slopes='geometric'"),
])
def test_what_llama_cpp_cannot_express_is_refused_by_name(store, arch, change, named):
    case = store.load(arch, "prefill-b2-s7")
    with pytest.raises(ConversionError, match=named):
        gguf_tensors(dataclasses.replace(case.config, **change), case.params())


def export(capsys, *args) -> tuple[int, str]:
    status = main(["golden", "export", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out + out.err


def test_the_command_offers_the_formats_the_exporter_writes():
    from lmref.commands.golden import FORMATS as OFFERED
    from lmref.conformance.golden_export import FORMATS

    assert OFFERED == FORMATS


def test_export_refuses_an_unmapped_knob_before_writing_anything(tmp_path, capsys):
    status, text = export(capsys, "--arch", "mistral-7b", "--format", "gguf", "--out", tmp_path / "out")
    assert status == 2 and "sliding_window=5" in text
    assert not (tmp_path / "out").exists()


def test_export_never_writes_into_a_directory_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    status, text = export(capsys, "--arch", "gpt2", "--format", "safetensors", "--out", tmp_path)
    assert status == 2 and "not empty" in text
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_export_never_writes_into_the_store_it_reads(tmp_path, capsys):
    """An export inside its golden store would be an entry the store's manifest does not list,
    which the suite and `lmref golden --check` then refuse."""
    root = tmp_path / "golden"
    assert main(["golden", "--arch", "gpt2", "--out", str(root)]) == 0
    listed = sorted(p.relative_to(root) for p in root.rglob("*"))
    status, text = export(capsys, "--arch", "gpt2", "--format", "safetensors", "--golden-dir", root,
                          "--out", root / "exported")
    assert status == 2 and f"--out {root / 'exported'}: lies inside the input {root}" in text
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == listed


def test_export_refuses_a_dangling_link_as_out_by_name(tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    status, text = export(capsys, "--arch", "gpt2", "--format", "safetensors", "--out", tmp_path / "link")
    assert status == 2
    assert f"--out {tmp_path / 'link'}: is a link to {tmp_path / 'nowhere'}, which does not exist" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


def test_export_reads_the_store_as_check_does(tmp_path, capsys, monkeypatch):
    """The package's store must be the release set, and an empty --golden-dir (an unset shell
    variable) is no request for it: case.json carries the tolerance rows an engine judges by."""
    import shutil

    from lmref.conformance import store as store_module
    from lmref.conformance.store import DEFAULT_GOLDEN_DIR, MANIFEST

    status, text = export(capsys, "--arch", "gpt2", "--format", "safetensors", "--golden-dir", "", "--out",
                          tmp_path / "out")
    assert status == 2 and "--golden-dir is empty" in text and not (tmp_path / "out").exists()
    root = tmp_path / "golden"
    root.mkdir()
    manifest = json.loads((DEFAULT_GOLDEN_DIR / MANIFEST).read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k.startswith("gpt2/")}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copytree(DEFAULT_GOLDEN_DIR / "gpt2", root / "gpt2")
    monkeypatch.setattr(store_module, "DEFAULT_GOLDEN_DIR", root)
    status, text = export(capsys, "--arch", "gpt2", "--format", "safetensors", "--out", tmp_path / "out")
    assert status == 2 and "differs from the release golden set" in text and not (tmp_path / "out").exists()


def test_the_crossing_longrope_decode_exports_its_prefill_logits_too(store, tmp_path, capsys):
    """decode-cross's decode re-runs the sequence where it crosses the original context, so one
    forward pass's logits differ from the decode's: the export writes both, and the manifest
    gives every case's logits shape."""
    out = tmp_path / "out"
    assert export(capsys, "--arch", "phi-3-mini-128k", "--format", "safetensors", "--out", out)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for name in store.case_names("phi-3-mini-128k"):
        case = store.load("phi-3-mini-128k", name)
        assert manifest["cases"][name]["logits"] == list(case.expected["logits"].shape)
        crossing = name.startswith("decode-cross")
        assert (out / name / "prefill_logits.npy").exists() == crossing, name
    case = store.load("phi-3-mini-128k", next(n for n in store.case_names("phi-3-mini-128k") if "cross" in n))
    prefill = np.load(out / case.name / "prefill_logits.npy")
    np.testing.assert_array_equal(prefill, case.prefill_logits)
    assert np.abs(prefill - np.load(out / case.name / "expected_logits.npy")).max() > 1e-3


def test_safetensors_export_holds_each_case_exactly(store, tmp_path, capsys):
    out = tmp_path / "out"
    assert export(capsys, "--arch", "gpt2", "--format", "safetensors", "--out", out)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == "gpt2" and set(manifest["cases"]) == set(store.case_names("gpt2"))
    case = store.load("gpt2", "decode-b2-p5-n6")
    record = json.loads((out / case.name / "case.json").read_text())
    assert (record["capability"], record["prompt_len"], record["tokens"]) == ("decode", 5, case.tokens.tolist())
    assert record["tolerances"]["float32"]["nmse"] == 1e-10
    np.testing.assert_array_equal(np.load(out / case.name / "tokens.npy"), case.tokens)
    np.testing.assert_array_equal(np.load(out / case.name / "expected_logits.npy"), case.expected["logits"])
    weights = load_file(out / case.name / "params.safetensors")
    assert weights.keys() == case.params().keys()
    assert all(np.array_equal(weights[k], v) for k, v in case.params().items())


def test_hf_export_reads_back_through_convert(store, tmp_path, capsys):
    from lmref.convert.hf import from_hf

    out = tmp_path / "out"
    assert export(capsys, "--arch", "llama3", "--format", "hf", "--out", out)[0] == 0
    case = store.load("llama3", "prefill-b2-s7")
    config, params = from_hf(out / case.name / "hf")
    assert config.n_kv_heads == case.config.n_kv_heads
    assert all(np.array_equal(params[k], v) for k, v in case.params().items())
