#!/usr/bin/env bash
# Every GPU row of benchmarks/README.md in one call on a CUDA machine (issue 16 item 4):
#
#   bash benchmarks/gpu_rows.sh OUT_DIR                  # every part, in this order
#   bash benchmarks/gpu_rows.sh OUT_DIR train onnx       # some parts (train, onnx, validate, twins)
#
# A part can take minutes (torch.compile of four 124M models in `train`), and the lent machine
# allows 10 minutes a command: name parts to split the rows over several calls, each into its
# own new directory.  Each part's log records its wall time.
# 1. training: GPT-2 124M and a LLaMA-style 127M, bf16 autocast, 16 x 1024, both sides
#    torch.compile'd, lmref's train_step beside transformers' model in the same run, with MFU
#    by PaLM's formula (bench_train.py --gpu);
# 2. onnxruntime-gpu's CUDA provider against torch CUDA on the 124.7M LLaMA-style model,
#    per-token decode and prefill (bench_onnx.py: its CUDA rows run when the provider is there);
# 3. `lmref validate-onnx --provider cuda` on an export, which fails unless CUDA took the graph
#    (export/runtime.py checks the session's providers and each node's placement);
# 4. the JAX twin on its GPU backend against the torch twin on CUDA (bench_twins.py --device cuda).
#
# Needs, in $PYTHON (default: python): lmref installed from this checkout (`pip install -e .`;
# on a machine without the network, `pip install --no-deps --no-build-isolation -e .`), torch
# with CUDA, transformers, onnx, onnxscript, jax with its CUDA plugin, and onnxruntime-gpu (on
# the lent machine: ../shared/tools/ort-gpu-parts.sh carries it; then PYTHONPATH=/tmp/ortsite).
# Writes only OUT_DIR, which must be new or empty: one log per part.  It refuses to start
# without a CUDA device or without onnxruntime's CUDA provider, so no row is ever silently CPU.
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_rows.sh OUT_DIR [train] [onnx] [validate] [twins]  (OUT_DIR new or empty)}
shift
parts=${*:-train onnx validate twins}
for part in $parts; do
  case $part in train|onnx|validate|twins) ;; *)
    echo "gpu_rows.sh: unknown part '$part'; the parts are train, onnx, validate, twins" >&2
    exit 2 ;;
  esac
done
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "gpu_rows.sh: $out is not empty; give a new or empty directory" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=$(command -v "${PYTHON:-python}")
case $py in /*) ;; *) py=$PWD/$py ;; esac  # an absolute path: the script works in benchmarks/
cd "$(dirname "$0")"
"$py" - <<'PY'
import lmref, onnxruntime, torch
assert torch.cuda.is_available(), "torch has no CUDA device: this script only runs the GPU rows"
assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), \
    "onnxruntime has no CUDA provider: install onnxruntime-gpu (../shared/tools/ort-gpu-parts.sh)"
print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| onnxruntime", onnxruntime.__version__)
PY
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/device.txt"
run_part() {
  local start=$SECONDS
  case $1 in
    train) "$py" bench_train.py --gpu --sizes "" --steps 5 --rounds 3 2>&1 | tee "$out/train.md" ;;
    onnx) "$py" bench_onnx.py --size 125m --repeats 5 2>&1 | tee "$out/onnx.md" ;;
    validate)
      "$py" -m lmref.cli export --preset llama3.1 --seed 0 --out "$out/llama31-onnx"
      "$py" -m lmref.cli validate-onnx "$out/llama31-onnx" --provider cuda 2>&1 | tee "$out/validate.txt" ;;
    twins) "$py" bench_twins.py --device cuda --sizes medium --repeats 5 2>&1 | tee "$out/twins.md" ;;
  esac
  echo "gpu_rows.sh: $1 took $((SECONDS - start)) s" | tee -a "$out/times.txt"
}
for part in $parts; do
  run_part "$part"
done
echo "gpu_rows.sh: done ($parts); the logs are in $out"
