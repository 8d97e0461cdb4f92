# catsdogs — every target sets up its own virtual environment first.
#   make train DATA=path/to/PetImages   train + evaluate the default preset (run folder: runs/…)
#   make train BUDGET=10                the same in a 10-minute budget
#   make test                           lint + the whole test suite (what CI runs)
#   make bench / make bench-quick       benchmarks → benchmarks/results/
#   make bench-backbones                Keras Applications backbones and transfer learning
#   make bench-scaling                  multi-worker training: 2 workers × 1 core vs 1 × 2 cores
#   make bench-streaming                peak memory against photos with --cache disk
#   make bench-profile                  where a training step's time goes (native, emulated AVX2)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/PetImages
# Non-pet photos to train with as outliers ("neither a cat nor a dog"), when that folder exists;
# `make train OTHER=` trains without them (the max-softmax baseline).
OTHER ?= $(wildcard ../shared/data/other)
PRESET ?= default
# Minutes for the whole `train` command (the preset's budget when empty: default 30, fast 5).
BUDGET ?=
# A new run folder each time: runs/default, runs/default-2, runs/default-3, …
RUN ?= $(shell n=1; d=runs/$(PRESET); while [ -e $$d ]; do n=$$((n+1)); d=runs/$(PRESET)-$$n; done; echo $$d)
ARGS ?=
# pytest-xdist processes for `make test`: two keep both CI cores busy while one test waits on a
# subprocess, a converter or TensorFlow's tracing; whole files per process (--dist loadfile), so
# a module's fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: install train test lint bench bench-quick bench-backbones bench-scaling bench-streaming \
	bench-profile clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,export]'
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/catsdogs train --data "$(DATA)" --out "$(RUN)" --preset $(PRESET) \
		$(if $(OTHER),--other "$(OTHER)") $(if $(BUDGET),--time-budget $(BUDGET)) $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: install
	$(BIN)/python benchmarks/run.py --data "$(DATA)" $(if $(OTHER),--other "$(OTHER)")

bench-quick: install
	$(BIN)/python benchmarks/run.py --data "$(DATA)" --quick

# Keras Applications backbones against our resnet (10-minute budget each), and transfer from
# flower photos (benchmarks/backbones.py).
bench-backbones: install
	$(BIN)/python benchmarks/backbones.py --data "$(DATA)" $(if $(OTHER),--flowers "$(OTHER)/flowers")

# One worker on 2 cores against two workers on 1 core each (benchmarks/scaling.py).
bench-scaling: install
	$(BIN)/python benchmarks/scaling.py --data "$(DATA)"

# Peak RSS of `train --cache disk` on 25k, 50k and 100k photos (PetImages plus variants), and
# PetImages with --cache memory against --cache disk (benchmarks/streaming.py).
bench-streaming: install
	$(BIN)/python benchmarks/streaming.py --data "$(DATA)"

# Where a training step's time goes (TensorFlow ops, oneDNN kernels) on this CPU and with oneDNN
# limited to AVX2 in float32, the emulated AVX2-only CPU (benchmarks/profile_step.py).
bench-profile: install
	$(BIN)/python benchmarks/profile_step.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
