# lmref: `make demo` runs the main job, `make test` the whole test suite.
# Each target installs what it needs into .venv first (from PyPI; a CPU-only machine never
# gets a CUDA build: the torch extra is pinned, see pyproject.toml).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_ARCH ?= llama3
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: install demo test test-thorough golden-check mutation clean

install: $(STAMP)

$(STAMP): pyproject.toml tests/transformers4.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,torch,jax,hf,train,onnx,genai,gguf]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target $(VENV)/transformers4 \
		-r tests/transformers4.txt
	touch $(STAMP)

# The main job: build the golden for one architecture from scratch, check it against the
# stored golden, run the conformance suite on it (the float64 NumPy golden as the
# implementation under test), then train a small LLaMA-3-style model on the embedded corpus
# (a few minutes on 2 CPU cores), sample from it, export it to ONNX, validate the graph in
# onnxruntime and sample from the graph.  Last, LLaVA: the two training stages on embedded
# images of coloured shapes beside a text-only baseline (1-3 minutes on 2 CPU cores), then a
# caption of an image written as a PNG file, printed under the true one, by the checkpoint and
# by its ONNX export.
DEMO_VISION_ARCH ?= llava
demo: install
	$(VENV)/bin/lmref golden --arch $(DEMO_ARCH) --out build/demo-golden
	$(VENV)/bin/lmref golden --check --arch $(DEMO_ARCH)
	$(PYTEST) conformance/ --arch $(DEMO_ARCH) --golden-dir build/demo-golden \
		--report-json build/demo-report.json
	rm -rf build/demo-train
	$(VENV)/bin/lmref train --arch llama3 --d-model 192 --n-heads 12 --n-layers 4 --steps 400 \
		--out build/demo-train
	$(VENV)/bin/lmref generate --checkpoint build/demo-train --prompt "The with statement" \
		--max-new-tokens 300 --seed 0
	rm -rf build/demo-onnx
	$(VENV)/bin/lmref export --checkpoint build/demo-train --out build/demo-onnx
	$(VENV)/bin/lmref validate-onnx build/demo-onnx
	$(VENV)/bin/lmref generate --onnx build/demo-onnx --prompt "The with statement" \
		--max-new-tokens 100 --greedy
	rm -rf build/demo-llava build/demo-shapes
	$(VENV)/bin/lmref train --arch $(DEMO_VISION_ARCH) --out build/demo-llava --no-progress
	@echo "an image (seed 1: not from the training stream, seed 0) and its true caption:"
	$(VENV)/bin/lmref shapes --out build/demo-shapes --count 1 --seed 1
	@echo "the trained model's caption of it:"
	$(VENV)/bin/lmref generate --checkpoint build/demo-llava --image build/demo-shapes/scene-000000.png --greedy
	rm -rf build/demo-llava-onnx
	$(VENV)/bin/lmref export --checkpoint build/demo-llava --out build/demo-llava-onnx
	$(VENV)/bin/lmref validate-onnx build/demo-llava-onnx
	@echo "the same caption from its three ONNX graphs (vision, embedding, decoder) in onnxruntime:"
	$(VENV)/bin/lmref generate --onnx build/demo-llava-onnx --image build/demo-shapes/scene-000000.png --greedy

# The whole suite: the project's own tests and the conformance suite over every arch, on
# TEST_JOBS pytest-xdist processes of one thread each (the CI machine has 2 cores; each
# process needs about 4 GiB).  --dist loadscope keeps a module's tests, and so its
# module-scoped fixtures (exported graphs, trained models), on one process.
TEST_JOBS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PYTEST) -n $(TEST_JOBS) --dist loadscope --hypothesis-profile=ci tests/ conformance/

# Everything, slow tests included.
test-thorough: install
	OMP_NUM_THREADS=1 $(PYTEST) -n $(TEST_JOBS) --dist loadscope -m "" --hypothesis-profile=thorough tests/ conformance/

# Mutation testing (docs/mutation.md): planted porting bugs in impl_torch and impl_jax, one at a
# time in a throwaway copy, through the property tests and the conformance suite; rewrites the
# table in docs/mutation.md.  Slow (see the doc), so not part of `make test`.
MUTATION_JOBS ?= 1
mutation: install
	$(PY) -m tools.mutation.run --jobs $(MUTATION_JOBS)

# Regenerate every golden case in memory and compare with the stored store.
golden-check: install
	$(VENV)/bin/lmref golden --check

clean:
	rm -rf build $(VENV)
