# dpprof: `make help` lists the targets. Every target that needs Python sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DPPROF := $(VENV)/bin/dpprof
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

STRATEGY ?= dp
MODEL ?= vgg16
GPUS ?=
NPROC ?=
STEPS ?= 12
EPOCHS ?=
BATCH ?= 128
OUT ?= traces
RUN ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv profile report test lint bench gpu-check gpu-wheels chromium clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "  variables: STRATEGY=single|dp|ddp|fsdp MODEL=vgg16|vgg16-tv|resnet18|tiny STEPS=N BATCH=N NPROC=N RUN=DIR ARGS='...'"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed ## create .venv and install dpprof with its dependencies

profile: venv ## profile one run (STRATEGY=dp by default), then write its report
	$(DPPROF) profile --strategy $(STRATEGY) --model $(MODEL) --steps $(STEPS) --batch-size $(BATCH) \
		$(if $(NPROC),--nproc $(NPROC)) $(if $(GPUS),--gpus $(GPUS)) $(if $(EPOCHS),--epochs $(EPOCHS)) --out $(OUT) --report $(ARGS)

report: venv ## write the HTML report of RUN=DIR
	@test -n "$(RUN)" || { echo "usage: make report RUN=traces/<run>"; exit 2; }
	$(DPPROF) report $(RUN) $(ARGS)

chromium: ## install headless Chromium for the report rendering test (Debian package)
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "chromium could not be installed: its test will be skipped"; }

test: venv chromium ## run the test suite (installs what it needs)
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

lint: venv ## ruff on the package, tests, benchmarks and examples; mypy on the package
	$(VENV)/bin/ruff check dpprof tests benchmarks examples
	$(VENV)/bin/mypy dpprof --ignore-missing-imports

bench: venv ## analyze-vs-HTA speed and memory, perfetto merge, collection overhead, dpprof run vs plain script, projection vs a measured DDP run
	$(PY) benchmarks/analyze_vs_hta.py $(ARGS)
	$(PY) benchmarks/perfetto_merge.py
	$(PY) benchmarks/overhead.py --model tiny
	$(PY) benchmarks/projection_check.py
	$(PY) benchmarks/run_overhead.py

gpu-check: ## on a GPU machine (no venv, wheels from .whl/): every GPU path, summary + archive into $OUT (benchmarks/README.md)
	GPU_CHECK_COMMAND="make gpu-check$(if $(ARGS), ARGS='$(ARGS)')" bash benchmarks/gpu_check.sh $(ARGS)

# The wheels the GPU image lacks (cp312, x86-64; KINDS.md lists what it has): the versions tested here.
GPU_WHEELS ?= msgspec==0.23.0 isal==1.9.1
gpu-wheels: ## download the wheels the GPU machine lacks (msgspec, python-isal) into .whl/; run where PyPI works
	mkdir -p .whl
	rm -f $(foreach w,$(GPU_WHEELS),.whl/$(firstword $(subst ==, ,$(w)))-*.whl)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	@ls -l .whl

clean: ## remove generated runs and reports (keeps .venv)
	rm -rf traces/*/ reports/*.html
