# Two commands on a fresh machine: `make train` and `make test`; each installs what is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/default.yaml
CALLBACKS ?= callbacks/li2.yaml

.PHONY: install train test test-slow bench

# constraints.txt pins the local CPU torch wheel here; pyproject keeps torch>=2.9 for users elsewhere
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	rm -rf src/*.egg-info  # build metadata; the editable install keeps its own in .venv
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) train.py fit --config $(CONFIG) --config $(CALLBACKS)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
