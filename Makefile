# Two entry points for people (see README): `make demo` and `make test`.
# Both create the virtual environment on first use. The constraints file pins the CPU build
# of torch used on our dev/CI machines and pins the declared floors of lightning and torchmetrics.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS ?= constraints-cpu.txt

.PHONY: demo test lint docs figures format bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev,docs,experiments]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lightning-mmloss compare --output runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

figures: $(STAMP)
	$(PY) docs/make_figures.py

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/loss_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
