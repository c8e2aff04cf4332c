"""The decoding loops bench_onnx.py runs every plain onnxruntime session in (ours and the
peers' graphs alike): NumPy in and out (`PlainDecoder`), I/O binding (`BoundDecoder`),
I/O binding over a shared-buffer KV cache (`SharedBufferDecoder`, GroupQueryAttention graphs),
and the same with one binding kept for the whole generation (`PersistentDecoder`)."""

from __future__ import annotations

import numpy as np

from lmref.spec.config import ModelConfig


class PlainDecoder:
    """One greedy decoding loop over any of the graphs: inputs by name (input_ids,
    attention_mask, position_ids when the graph takes them, past_key_values.{i}.key/value),
    the outputs present.{i}.key/value fed back as the matching past."""

    def __init__(self, session, config: ModelConfig):
        self.session, self.config = session, config
        names = [i.name for i in session.get_inputs()]
        self.past = [n for n in names if n.startswith("past_key_values.")]
        self.takes_positions = "position_ids" in names
        self.outputs = [o.name for o in session.get_outputs()]
        self.feeds_back = {o: o.replace("present.", "past_key_values.", 1) for o in self.outputs
                           if o.startswith("present.")}

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.config.n_kv_heads, 0, self.config.head_dim)  # [B, KV, 0, hd]
        return {name: np.zeros(shape, np.float32) for name in self.past}

    def inputs(self, ids: np.ndarray, total: int) -> dict[str, np.ndarray]:
        """input_ids [B, S], attention_mask [B, total] and position_ids [B, S] when taken."""
        feed = {"input_ids": ids, "attention_mask": np.ones((ids.shape[0], total), np.int64)}
        if self.takes_positions:
            feed["position_ids"] = np.ascontiguousarray(np.broadcast_to(
                np.arange(total - ids.shape[1], total), ids.shape))  # [B, S]
        return feed

    def step(self, ids: np.ndarray, total: int, past: dict) -> tuple[np.ndarray, dict]:
        """(logits [B, S, V], next past) of ids [B, S] after `past`, `total` = past + S."""
        out = dict(zip(self.outputs, self.session.run(self.outputs, self.inputs(ids, total) | past)))
        return out["logits"], {self.feeds_back[name]: out[name] for name in self.feeds_back}

    def generate(self, prompt: np.ndarray, steps: int) -> list[int]:
        """Prefill `prompt` [1, P] from an empty past, then `steps` greedy single-token steps."""
        logits, past = self.step(prompt, prompt.shape[1], self.empty_past(1))
        tokens = []
        for t in range(steps):
            tokens.append(int(logits[0, -1].argmax()))
            logits, past = self.step(np.array([[tokens[-1]]], np.int64), prompt.shape[1] + t + 1, past)
        return tokens

    def prefill(self, prompt: np.ndarray) -> None:
        self.step(prompt, prompt.shape[1], self.empty_past(prompt.shape[0]))


class BoundDecoder(PlainDecoder):
    """The same loop with I/O binding: the presents stay onnxruntime's OrtValues on `device`
    ("cuda" for the GPU rows) and are bound as the next step's past, never converted to NumPy
    (session.run copies every output into a new array); the step's inputs are host arrays
    onnxruntime copies over, and only the logits are read back."""

    def __init__(self, session, config: ModelConfig, device: str = "cpu"):
        super().__init__(session, config)
        self.device = device

    def empty_past(self, batch: int) -> dict:
        import onnxruntime as ort

        empty = super().empty_past(batch)  # [B, KV, 0, hd] arrays by name
        return {name: ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for name, a in empty.items()}

    def bound_inputs(self, ids: np.ndarray, total: int, past: dict):
        """An io_binding with the step's inputs (host arrays) and the past (OrtValues) bound."""
        binding = self.session.io_binding()
        for name, value in self.inputs(ids, total).items():
            binding.bind_cpu_input(name, value)
        for name, value in past.items():
            binding.bind_ortvalue_input(name, value)
        return binding

    def step(self, ids: np.ndarray, total: int, past: dict) -> tuple[np.ndarray, dict]:
        binding = self.bound_inputs(ids, total, past)
        for name in self.outputs:
            binding.bind_output(name, "cpu" if name == "logits" else self.device)
        self.session.run_with_iobinding(binding)
        out = dict(zip(self.outputs, binding.get_outputs()))
        return out["logits"].numpy(), {self.feeds_back[name]: out[name] for name in self.feeds_back}


class SharedBufferDecoder(BoundDecoder):
    """I/O binding with a shared-buffer KV cache, for graphs whose attention is onnxruntime's
    GroupQueryAttention (ours with --ort-contrib, the genai builder's): each layer's past and
    present are one preallocated OrtValue [B, KV, capacity, hd], bound as both, so the op writes
    the new keys in place at each row's length (its buffer-sharing mode, taken when past and
    present are the same tensor), as onnxruntime-genai's generator does with
    past_present_share_buffer.  The greedy-token check before timing fails if the op did not.
    capacity: the prompt and the steps of one generation."""

    capacity = 0

    def empty_past(self, batch: int) -> dict:
        import onnxruntime as ort

        shape = (batch, self.config.n_kv_heads, self.capacity, self.config.head_dim)  # [B, KV, capacity, hd]
        return {name: ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for name in self.past}

    def step(self, ids: np.ndarray, total: int, past: dict) -> tuple[np.ndarray, dict]:
        binding = self.bound_inputs(ids, total, past)
        binding.bind_output("logits", "cpu")
        for present, name in self.feeds_back.items():
            binding.bind_ortvalue_output(present, past[name])
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy(), past

    def generate(self, prompt: np.ndarray, steps: int) -> list[int]:
        self.capacity = prompt.shape[1] + steps
        return super().generate(prompt, steps)

    def prefill(self, prompt: np.ndarray) -> None:
        self.capacity = prompt.shape[1]
        super().prefill(prompt)


class PersistentDecoder(SharedBufferDecoder):
    """The shared-buffer loop with one io_binding for a whole generation, as a C++ loop keeps its
    state: the KV buffers are bound once as past and present, the decode steps' logits go into
    one preallocated [1, 1, V] array, and each step rebinds only input_ids, attention_mask (a
    prefix of one preallocated row of ones) and position_ids."""

    def generate(self, prompt: np.ndarray, steps: int) -> list[int]:
        import onnxruntime as ort

        self.capacity = total = prompt.shape[1] + steps
        binding, past = self.session.io_binding(), self.empty_past(1)
        for name, value in past.items():
            binding.bind_ortvalue_input(name, value)
        for present, name in self.feeds_back.items():
            binding.bind_ortvalue_output(present, past[name])
        mask = np.ones((1, total), np.int64)
        positions = np.arange(total, dtype=np.int64)[None]  # [1, total]
        ids = np.zeros((1, 1), np.int64)
        prefill_logits = np.zeros((1, prompt.shape[1], self.config.vocab_size), np.float32)
        logits = np.zeros((1, 1, self.config.vocab_size), np.float32)

        def run(tokens: np.ndarray, end: int) -> None:
            binding.bind_cpu_input("input_ids", tokens)
            binding.bind_cpu_input("attention_mask", mask[:, :end])
            if self.takes_positions:
                binding.bind_cpu_input("position_ids", positions[:, end - tokens.shape[1]:end])
            self.session.run_with_iobinding(binding)

        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(prefill_logits))  # shares its memory
        run(prompt, prompt.shape[1])
        last = prefill_logits[0, -1]
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        tokens = []
        for t in range(steps):
            tokens.append(int(last.argmax()))
            ids[0, 0] = tokens[-1]
            run(ids, prompt.shape[1] + t + 1)
            last = logits[0, -1]
        return tokens
