"""`lmref export` and `lmref validate-onnx`: argparse wiring (lmref/cli.py registers them with
`add_commands`; `lmref generate --onnx` is lmref/commands/train.py's `generate`).  torch, onnx and onnxruntime are
imported only when a command runs."""

from __future__ import annotations

import argparse
import json

from lmref.commands.errors import fail, known_errors

PROVIDERS = ("auto", "cpu", "cuda")


def cmd_export(args: argparse.Namespace) -> int:
    from lmref.export.exporter import MANIFEST_FILE, export_checkpoint, export_preset

    if args.seed is not None and args.preset is None:
        return fail("export", ValueError("--seed goes with --preset"))
    if args.seed is not None and args.seed < 0:
        return fail("export", ValueError(f"--seed must be a non-negative integer, got {args.seed}"))
    try:
        if args.preset is not None:
            path = export_preset(args.preset, args.seed or 0, args.out, external_data=args.external_data or None,
                                 ort_contrib=args.ort_contrib, genai_eos=args.genai_eos)
        else:
            path = export_checkpoint(args.checkpoint, args.out, external_data=args.external_data or None,
                                     ort_contrib=args.ort_contrib, genai_eos=args.genai_eos)
    except KeyError as e:  # unknown preset: the message lists the known ones
        return fail("export", ValueError(e.args[0]))
    except known_errors() as e:
        return fail("export", e)
    files = sorted([MANIFEST_FILE, *json.loads((path.parent / MANIFEST_FILE).read_text())["files"]])  # not yours
    graphs = sorted(p.name for p in path.parent.glob("*.onnx"))  # a vision tower's three, else model.onnx
    size = sum(p.stat().st_size for p in path.parent.glob("*.onnx*"))  # with their external data
    print(f"wrote {', '.join(graphs)} to {path.parent} ({size / 1e6:.2f} MB of graphs with their weights); "
          f"{path.parent}: {', '.join(files)}")
    return 0


def _providers(choice: str) -> list[str]:
    """The providers `--provider choice` names; ValueError (bad input) for one onnxruntime lacks."""
    from lmref.export.runtime import CPU, CUDA, available_providers

    available = available_providers()
    if choice == "auto":
        return available
    wanted = {"cpu": [CPU], "cuda": [CUDA]}[choice]
    if not set(wanted) <= set(available):
        raise ValueError(f"--provider cuda: onnxruntime has no CUDAExecutionProvider here "
                         f"(available: {', '.join(available)}; install onnxruntime-gpu)")
    return wanted


def cmd_validate(args: argparse.Namespace) -> int:
    from lmref.export.bundle import open_bundle, reference_params
    from lmref.export.errors import ProviderError
    from lmref.export.validate import check_scenario, check_weights, default_prompt_len, validate

    try:
        providers = _providers(args.provider)
        bundle = open_bundle(args.out)
        prompt_len = default_prompt_len(bundle.config, args.pad) if args.prompt_len is None else args.prompt_len
        check_scenario(bundle.config, prompt_len, args.pad, args.steps, args.seed)  # before the weights are read
        params = reference_params(bundle, args.checkpoint)
        checks = validate(bundle, params, providers, prompt_len=prompt_len, pad=args.pad, steps=args.steps,
                          seed=args.seed)
        weights = check_weights(bundle, params)
    except ProviderError as e:  # the session ran elsewhere than asked: the run failed
        return fail("validate-onnx", e, status=1)
    except (*known_errors(), ValueError) as e:
        return fail("validate-onnx", e)
    print(weights.line())
    failed = [c for c in checks if c.failed]
    passed = (f"{len(checks) - len(failed)} of {len(checks)} checks passed, float32 tolerance row of "
              "conformance/tolerances.py")
    if weights.failed:
        print(f"validate-onnx: FAIL (the graph's weights differ from the reference's; {passed})")
    else:
        print(f"validate-onnx: {'FAIL' if failed else 'PASS'} ({passed}; weights equal the reference bit for bit)")
    return 1 if failed or weights.failed else 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX (one graph for prefill and KV-cache decode)",
        description="torch.onnx.export(dynamo=True) at opset 18 of an lmref checkpoint or a preset's tiny "
                    "model.  OUT gets model.onnx (+ model.onnx.data with external data; a vision tower adds "
                    "vision.onnx and embed.onnx, and model.onnx takes inputs_embeds), config.json, "
                    "export.json (with the sha256 of every file), the checkpoint's tokenizer.json when it "
                    "has one, and with --genai-eos genai_config.json for onnxruntime-genai.  OUT must be new, "
                    "empty, or an earlier export's (marked); never the checkpoint.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="an lmref checkpoint (config.json + params.safetensors), "
                        "or a training checkpoint / run directory of `lmref train`")
    source.add_argument("--preset", metavar="NAME", help="tiny(NAME) with spec.init_params")
    p.add_argument("--seed", type=int, help="with --preset: the init seed (default 0)")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="the directory to write: new, empty, or written by an earlier `lmref export`")
    p.add_argument("--external-data", action="store_true",
                   help="store the weights in model.onnx.data (default: only from 1 GiB of weights on)")
    p.add_argument("--ort-contrib", action="store_true",
                   help="rewrite the decoder with onnxruntime's contrib ops (GroupQueryAttention, RotaryEmbedding, "
                        "SkipSimplifiedLayerNormalization; docs/onnx.md): faster in onnxruntime, run by no "
                        "other runtime (default: the plain opset-18 graph)")
    p.add_argument("--genai-eos", type=int, metavar="ID",
                   help="with --ort-contrib: also write genai_config.json, with ID as the end token, so that "
                        "onnxruntime-genai's generator runs the graph (docs/onnx.md; an lmref model has no end "
                        "token of its own: 0, the byte tokenizer's NUL, never occurs in text)")
    p.set_defaults(run=cmd_export)


def _add_validate(sub) -> None:
    p = sub.add_parser(
        "validate-onnx", help="run an exported graph in onnxruntime against the golden and the torch twin",
        description="Prefill a left-padded batch of 2 from an empty past, then decode step by step through "
                    "the graph's own KV cache; compare every real position with the float64 golden and the "
                    "float32 torch twin (each row unpadded) on every available provider, and every weight of "
                    "the graph with a fresh export of the reference weights, bit for bit.  Exit 1 on a "
                    "mismatch; exit 2 when the directory fails its checks (a file whose sha256 differs from "
                    "export.json's, a path outside the directory, a truncated file).")
    p.add_argument("out", metavar="OUT", help="a directory written by `lmref export`")
    p.add_argument("--checkpoint", metavar="DIR", help="reference weights (default: the source export.json records)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto",
                   help="auto: the CPU, and CUDA too when onnxruntime has it (default)")
    p.add_argument("--prompt-len", type=int, help="longest prompt (default 11; past a RoPE scaling's original context "
                   "and, in both rows, past a sliding window)")
    p.add_argument("--pad", type=int, default=3, help="left padding of the second row (default 3)")
    p.add_argument("--steps", type=int, default=8, help="decode steps after the prefill (default 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the tokens: random ones, or for a mixture of experts the seed of the "
                   "search for tokens whose routing has a margin (export/routing.py) (default 0)")
    p.set_defaults(run=cmd_validate)


def add_commands(sub) -> None:
    """Register `export` and `validate-onnx`."""
    _add_export(sub)
    _add_validate(sub)
