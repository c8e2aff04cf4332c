"""`--impl llama_cpp`: llama.cpp itself, through llama-cpp-python, checked against the golden.

    pip install 'lmref[llama_cpp]'            # builds llama.cpp from source: ~16 min on 2 cores
    pytest conformance/ --impl llama_cpp --arch llama3,gpt2,mpt,olmo

For every call the adapter writes the case's config and weights as a float32 GGUF
(convert/gguf.py: llama.cpp's tensor names, Q/K rows in GGML's rotary order, `rope_freqs` for
llama3 scaling, no tokenizer) and loads it with `llama_cpp.Llama`, forcing what the binding's
defaults would otherwise blur:
- a float32 KV cache (`type_k`, `type_v` = GGML_TYPE_F32): the default float16 cache alone
  costs an NMSE of about 3e-7 (issue 15's measurement), far outside the float32 row;
- flash attention off (`flash_attn=False`): llama.cpp's flash-attention path accumulates in
  float16 on some backends;
- logits of every position (`logits_all=True`), and a context and batch as long as the case,
  so a prefill is one `llama_decode`.
Each row of the batch runs alone (a fresh cache: `reset`), one thread.  `decode` evaluates the
prompt, then one token per `eval` through llama.cpp's KV cache; the logits of every position
are the concatenation, as the suite's decode check expects.

A config that no llama.cpp architecture computes (convert/gguf.py `check_expressible`: a
sliding window, a softcap, Gemma's norms, ...) or that is not mapped yet is NOT SUPPORTED,
naming the knob.  There is no loss, capture or routing in the binding: those checks are NOT
SUPPORTED too.  What the suite finds (docs/engines.md): the LLaMA family and OLMo pass the
float32 row; GPT-2 meets only the float16 row (ggml's CPU GELU goes through a float16 lookup
table); MPT fails, because llama.cpp's MPT graph uses the tanh GELU where MPT uses the exact one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import llama_cpp
import numpy as np

from lmref.convert.errors import ConversionError
from lmref.convert.gguf import write_gguf
from lmref.spec.config import ModelConfig

MIN_CONTEXT = 32  # llama.cpp pads its context; a few positions more than the case costs nothing


class LlamaCppAdapter:
    """llama.cpp's float32 CPU graph for each golden case (forward, decode)."""

    name = "llama_cpp"
    version = f"llama-cpp-python {llama_cpp.__version__}"
    dtype = "float32"

    def _load(self, config: ModelConfig, params: dict[str, np.ndarray], directory: str, positions: int):
        """A `llama_cpp.Llama` on the case's GGUF with a float32 cache and every position's logits."""
        try:
            path = write_gguf(config, params, Path(directory) / "model.gguf")
        except ConversionError as e:
            raise NotImplementedError(f"llama.cpp has no graph for this config: {e}") from None
        n_ctx = max(positions, MIN_CONTEXT)
        return llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=1, n_threads_batch=1,
            logits_all=True, flash_attn=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
            n_gpu_layers=0, verbose=False)

    def _run(self, config: ModelConfig, params: dict, tokens: np.ndarray, prompt_len: int | None) -> np.ndarray:
        """Logits [B, S, vocab] float32; each row from an empty cache, its first `prompt_len`
        tokens in one evaluation (all of them when None), then one token per evaluation."""
        batch, seq = tokens.shape
        with tempfile.TemporaryDirectory() as tmp:
            llm = self._load(config, params, tmp, seq)
            try:
                rows = []
                for row in tokens.tolist():
                    llm.reset()
                    first = seq if prompt_len is None else prompt_len
                    llm.eval(row[:first])
                    for token in row[first:]:
                        llm.eval([token])
                    rows.append(np.array(llm.scores[:seq], dtype=np.float32))  # [S, vocab]
            finally:
                llm.close()
        return np.stack(rows)  # [B, S, vocab]

    def forward(self, config, params, tokens):
        return self._run(config, params, tokens, None)

    def decode(self, config, params, tokens, prompt_len):
        return self._run(config, params, tokens, prompt_len)
