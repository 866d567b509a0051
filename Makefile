# Two commands do everything on a fresh machine: `make run` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS := cli,export,vision,zoo,text,integrations,dev,search,ray

.PHONY: setup run test test-heavy test-fast zoo bench data clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

data:
	@bash scripts/get-data.sh

run: setup
	$(BIN)/prunekit run

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not zoo and not heavy"

test-heavy: setup  # the entry checks that take minutes each (methods' scaled small-scale checks)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m heavy

test-fast: setup
	$(BIN)/python -m pytest -q -x -m "not zoo and not slow"

zoo: setup
	$(BIN)/pip install -q -e '.[yolo]'
	$(BIN)/python benchmarks/zoo_coverage.py --tools torch-pruning,prunekit

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
