# lmref: `make demo` runs the main job, `make test` the whole test suite.
# Each target installs what it needs into .venv first (from PyPI; a CPU-only machine never
# gets a CUDA build: the torch extra is pinned, see pyproject.toml).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_ARCH ?= llama3
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: install demo test test-thorough golden-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,torch,jax,hf]'
	touch $(STAMP)

# The main job: build the golden for one architecture from scratch, check it against the
# stored golden, then run the conformance suite on it (the float64 NumPy golden as the
# implementation under test).
demo: install
	$(VENV)/bin/lmref golden --arch $(DEMO_ARCH) --out build/demo-golden
	$(VENV)/bin/lmref golden --check --arch $(DEMO_ARCH)
	$(PYTEST) conformance/ --arch $(DEMO_ARCH) --golden-dir build/demo-golden \
		--report-json build/demo-report.json

# The whole suite: the project's own tests and the conformance suite over every arch.
test: install
	$(PYTEST) --hypothesis-profile=ci tests/ conformance/

# Everything, slow tests included.
test-thorough: install
	$(PYTEST) -m "" --hypothesis-profile=thorough tests/ conformance/

# Regenerate every golden case in memory and compare with the stored store.
golden-check: install
	$(VENV)/bin/lmref golden --check

clean:
	rm -rf build $(VENV)
