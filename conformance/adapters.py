"""The adapter protocol: how an implementation plugs into the conformance suite.

The minimum a third party writes is one function:

    def forward(config: spec.ModelConfig, params: dict[str, np.ndarray], tokens: np.ndarray):
        return logits  # [batch, seq, vocab], any float dtype, anything np.asarray takes

`params` are float64 NumPy arrays in the canonical layout of spec/params.py (a copy of the
case's weights on every call: mutate them freely, conformance/copies.py); `tokens` is int64
[batch, seq].

An adapter object (or a class, instantiated with no arguments) has a `forward` method with
that signature and may add optional capabilities; one it lacks is reported NOT SUPPORTED:

    decode(config, params, tokens, prompt_len) -> logits [B, S, V]
        the first prompt_len tokens in one prefill call, then one token at a time through
        the implementation's KV cache (teacher-forced), logits of every position
    loss(config, params, tokens) -> float       mean next-token cross-entropy, plus PaLM's logit
                                                z-loss and a mixture's load-balancing and router
                                                z-losses where the config has them (impl_numpy/
                                                model.py `loss`)
    capture(config, params, tokens) -> {name: array}
        named intermediates of a forward pass, names as `lmref.spec.capture_names(config)`
        (`embed`, `layers.{i}.attn`, `layers.{i}.router`, `layers.{i}.mlp`, `layers.{i}.out`,
        `final_norm`, `logits`); any subset
    routing(config, params, tokens) -> {"layers.{i}": int array [B, S, k]}
        mixtures of experts: the experts each MoE layer chose for each token (any order;
        conformance/routing.py)
    pixel_values=                               a keyword every method above may take: the images
                                                [N, C, H, W] float64 of a multimodal case (spec/
                                                vision.py); a method without it gets NOT SUPPORTED
                                                on those cases, never a PASS
    name, version                               shown in the report header
    dtype                                       float64 | float32 | bfloat16 | float16: the
                                                tolerance row; float32 when not declared,
                                                whatever dtype the results come back in
                                                (see `Adapter.row`)

A method that raises `NotImplementedError` (e.g. for an architecture it does not cover) is
reported NOT SUPPORTED with that message; any other exception (SystemExit included) is an
ERROR.

`--impl` / `LMREF_IMPL` name the adapter: a built-in (`numpy`: the float64 golden, every
capability; `torch`, `jax`: the twins, and `torch-eager`, `torch-moe-loop`, `torch-moe-dense`:
the torch twin through its other kernels; `hf`: transformers; `onnx`: the export in onnxruntime;
`llama_cpp`: llama.cpp on the GGUF lmref writes; see BUILTINS) or `package.module:attr`.  An
empty value is refused: it is what an unset shell variable gives (`--impl "$IMPL"`), and it
must not quietly test the golden against itself.

The pytest suite runs the adapter in a worker process (conformance/worker.py); `run_check`
called with an adapter object runs it in the calling process.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
import traceback
from collections.abc import Callable

import numpy as np

from lmref.conformance.copies import WeightCopies
from lmref.conformance.results import (
    AdapterResultError, Output, name_of_dtype, raised, validate_array, validate_captures, validate_scalar,
)
from lmref.conformance.tolerances import DTYPES
from lmref.spec.config import ModelConfig

CAPABILITIES = ("forward", "decode", "loss", "capture", "routing")
ENV_VAR = "LMREF_IMPL"
DEFAULT_IMPL = "numpy"
# Built-in implementations, imported only when named (torch and JAX are optional extras).
BUILTINS = {
    "numpy": "lmref.conformance.numpy_adapter:NumpyAdapter",
    "torch": "lmref.impl_torch.adapter:TorchAdapter",  # SDPA attention
    "torch-eager": "lmref.impl_torch.adapter:eager",  # the eager attention kernel
    "torch-moe-loop": "lmref.impl_torch.adapter:moe_loop",  # MoE: the per-expert loop
    "torch-moe-dense": "lmref.impl_torch.adapter:moe_dense",  # MoE: every expert on every token
    "jax": "lmref.impl_jax.adapter:JaxAdapter",
    "hf": "lmref.convert.hf_adapter:HFAdapter",
    "onnx": "lmref.export.onnx_adapter:OnnxAdapter",
    "llama_cpp": "lmref.convert.llama_cpp_adapter:LlamaCppAdapter",  # the `llama_cpp` extra
}


class AdapterLoadError(Exception):
    """The implementation named by --impl / LMREF_IMPL cannot be loaded or is not an adapter."""


class AdapterNotSupported(Exception):
    """The adapter raised NotImplementedError for this call (NOT SUPPORTED)."""


class AdapterCallError(Exception):
    """The adapter raised an exception (an ERROR); the message has its type, text and frames."""


def takes_images(method) -> bool:
    """Whether an adapter method accepts the `pixel_values` keyword (by name or **kwargs)."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(p.name == "pixel_values" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# --- the wrapper --------------------------------------------------------------------------------


def _version_of(impl: object) -> str:
    declared = getattr(impl, "version", None)
    if declared is not None:
        return str(declared)
    top = (getattr(impl, "__module__", None) or type(impl).__module__).split(".")[0]
    try:
        return f"{top} {importlib.metadata.version(top)}"
    except importlib.metadata.PackageNotFoundError:
        version = getattr(sys.modules.get(top), "__version__", None)
        return f"{top} {version}" if version else "unknown"


def _declared_dtype(impl: object) -> str | None:
    declared = getattr(impl, "dtype", None)
    if declared is None:
        return None
    name = name_of_dtype(declared)
    if name not in DTYPES:
        raise AdapterLoadError(f"adapter dtype {declared!r} is not one of {', '.join(DTYPES)}")
    return name


DEFAULT_ROW = "float32"


def row_phrase(declared: str | None) -> str:
    """How the row was chosen, for the header and FAIL messages."""
    return "declared by the adapter" if declared else "the default: the adapter declares no dtype"


class Adapter:
    """An implementation wrapped for the suite: capability queries, copies in, validation out."""

    def __init__(self, impl: object, spec: str):
        if not (callable(getattr(impl, "forward", None)) or callable(impl)):
            raise AdapterLoadError(
                f"got a {type(impl).__name__}, not an adapter: expected a forward function, "
                "an object with a forward method, or a class"
            )
        self.impl, self.spec = impl, spec
        try:
            self.name = str(getattr(impl, "name", None) or spec)
            self.version = _version_of(impl)
            self.dtype = _declared_dtype(impl)
        except AdapterLoadError:
            raise
        except (Exception, SystemExit) as e:  # a property that raises: a load error, as in the worker
            raise AdapterLoadError(f"reading its name, version or dtype raised {type(e).__name__}: {e}") from None
        self._weights = WeightCopies()

    def supports(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; capabilities: {', '.join(CAPABILITIES)}")
        return self._method(capability) is not None

    def row(self, returned_dtype: str = "") -> str:
        """The tolerance row: the declared dtype, else float32.  Never the dtype the results
        come back in (`returned_dtype`, ignored): a float32 port with a 1% error must not pass
        by returning bfloat16 (issue 10, item 5)."""
        return self.dtype or DEFAULT_ROW

    def row_phrase(self) -> str:
        """How the row was chosen, for the header and FAIL messages."""
        return row_phrase(self.dtype)

    def call_case(self, capability: str, case) -> Output | dict[str, Output]:
        """Run `capability` on a golden case's config, weights and tokens (the weights built
        once per (config, seed)); worker_adapter.WorkerAdapter runs it in its worker."""
        from lmref.conformance.store import case_params

        params = case_params(case.config, case.meta["weights"]["seed"])
        extra = (case.prompt_len,) if capability == "decode" else ()
        images = {} if case.pixel_values is None else {"pixel_values": case.pixel_values}
        return getattr(self, capability)(case.config, params, case.tokens, *extra, **images)

    def _method(self, capability: str):
        method = getattr(self.impl, capability, None)
        if callable(method):
            return method
        return self.impl if capability == "forward" and callable(self.impl) else None

    def _call(self, capability: str, config: ModelConfig, params: dict, tokens: np.ndarray, *extra, **images):
        method = self._method(capability)
        if method is None:
            raise AdapterNotSupported(f"{self.name} has no {capability}")
        if images and not takes_images(method):
            raise AdapterNotSupported(f"{self.name}.{capability} takes no pixel_values: the case has images "
                                      "(a multimodal case; conformance/adapters.py)")
        params = self._weights.of(params)
        images = {k: np.array(v, copy=True) for k, v in images.items()}
        try:
            return method(config, params, np.array(tokens, copy=True), *extra, **images)
        except NotImplementedError as e:
            raise AdapterNotSupported(f"{self.name}.{capability} raised {raised(e)}") from e
        except (Exception, SystemExit) as e:  # sys.exit() in an adapter ends its check, not the run
            frames = "".join(traceback.format_tb(e.__traceback__)[1:][-5:])
            raise AdapterCallError(
                f"{self.name}.{capability} raised {raised(e)}\n"
                f"adapter traceback (most recent call last):\n{frames.rstrip()}"
            ) from e

    def forward(self, config: ModelConfig, params: dict, tokens: np.ndarray, **images) -> Output:
        value = self._call("forward", config, params, tokens, **images)
        return validate_array(value, "forward", tokens.shape + (config.vocab_size,), "= [batch, seq, vocab]")

    def decode(self, config: ModelConfig, params: dict, tokens: np.ndarray, prompt_len: int, **images) -> Output:
        value = self._call("decode", config, params, tokens, prompt_len, **images)
        return validate_array(value, "decode", tokens.shape + (config.vocab_size,), "= [batch, seq, vocab]")

    def loss(self, config: ModelConfig, params: dict, tokens: np.ndarray, **images) -> Output:
        return validate_scalar(self._call("loss", config, params, tokens, **images), "loss")

    def capture(self, config: ModelConfig, params: dict, tokens: np.ndarray, **images) -> dict[str, Output]:
        return validate_captures(self._call("capture", config, params, tokens, **images), "capture")

    def routing(self, config: ModelConfig, params: dict, tokens: np.ndarray, **images) -> dict[str, np.ndarray]:
        """{"layers.{i}": int64 [B, S, k]} for every MoE layer (conformance/routing.py)."""
        from lmref.conformance.routing import RoutingResultError, validate_routing
        from lmref.spec.captures import moe_layers

        value = self._call("routing", config, params, tokens, **images)
        try:
            return validate_routing(value, [f"layers.{i}" for i in moe_layers(config)],
                                    (*tokens.shape, config.moe.n_experts_per_token), config.moe.n_experts)
        except RoutingResultError as e:
            raise AdapterResultError(str(e)) from None


# --- loading ------------------------------------------------------------------------------------


def _spec_of(impl: object) -> str:
    target = impl if inspect.isfunction(impl) or inspect.isclass(impl) else type(impl)
    return f"{target.__module__}:{target.__qualname__}"


def as_adapter(impl: object, spec: str | None = None) -> Adapter:
    """Wrap a forward function, an adapter object or class (instantiated), or return an Adapter as is."""
    if isinstance(impl, Adapter):
        return impl
    spec = spec or _spec_of(impl)
    if inspect.isclass(impl):
        try:
            impl = impl()
        except (Exception, SystemExit) as e:
            raise AdapterLoadError(f"class {impl.__qualname__} could not be instantiated with no arguments "
                                   f"({type(e).__name__}: {e})") from None
    return Adapter(impl, spec)


def _import_target(target: str) -> object:
    """The object named by 'package.module:attr' (attr may be dotted: 'module:Class.attr')."""
    module_name, colon, attr_path = target.partition(":")
    if not colon or not module_name or not attr_path:
        raise AdapterLoadError(f"unknown implementation: built-ins are {', '.join(BUILTINS)}; "
                               "a third-party adapter is named package.module:attr")
    try:
        obj = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # sys.exit() at import: a load error, not the end of the command
        raise AdapterLoadError(f"cannot import module {module_name!r} ({type(e).__name__}: {e})") from None
    parts = attr_path.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            owner = f"module {module_name!r}" if i == 0 else f"{module_name}:{'.'.join(parts[:i])}"
            raise AdapterLoadError(f"{owner} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


_NAME_ONE = f"name a built-in ({', '.join(BUILTINS)}) or package.module:attr"


def resolve_impl_spec(spec: str | None) -> tuple[str, str]:
    """(the implementation's spec, where it came from): the --impl value, else $LMREF_IMPL, else
    'numpy'.  An empty or blank --impl or $LMREF_IMPL is an AdapterLoadError: it is what an
    unset shell variable gives, never a request for the default (issue 10, item 6)."""
    if spec is not None:
        if not spec.strip():
            raise AdapterLoadError(f"--impl is empty (an unset shell variable?): {_NAME_ONE}, "
                                   f"or leave --impl out for ${ENV_VAR}, else {DEFAULT_IMPL}")
        return spec.strip(), "--impl"
    value = os.environ.get(ENV_VAR)
    if value is not None:
        if not value.strip():
            raise AdapterLoadError(f"${ENV_VAR} is set but empty: {_NAME_ONE}, or unset it for the default "
                                   f"({DEFAULT_IMPL})")
        return value.strip(), f"${ENV_VAR}"
    return DEFAULT_IMPL, "default --impl"


def load_resolved(spec: str) -> Adapter:
    """The adapter named by a resolved spec (a built-in name or 'package.module:attr')."""
    return as_adapter(_import_target(BUILTINS.get(spec, spec)), spec)


def load_adapter(spec: str | None = None) -> Adapter:
    """The adapter named by `spec`: a built-in name or 'package.module:attr' (None: $LMREF_IMPL,
    else numpy).  AdapterLoadError messages start with where the name came from."""
    spec, where = resolve_impl_spec(spec)
    return load_named(spec, where, load_resolved)


def load_named(spec: str, where: str, load: Callable[[str], Adapter]) -> Adapter:
    """`load(spec)`, an AdapterLoadError's message starting with where the name came from
    (resolve_impl_spec's `where`: "--impl", "$LMREF_IMPL", ...)."""
    try:
        return load(spec)
    except AdapterLoadError as e:
        raise AdapterLoadError(f"{where} {spec}: {e}") from None
