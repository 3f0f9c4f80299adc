# The two set-up commands: `make demo` and `make test`. Each creates .venv and installs
# what it needs on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CLI    := $(BIN)/convert-leads
DEMO_DATA  ?= data/demo
DEMO_LEADS ?= 20000
DEMO_AS_OF ?= 2026-01-01
DEMO_CRM   ?= sqlite:///data/crm.db
DEMO_REPORT ?= reports/demo-report.html

.PHONY: demo test install install-dev lint bench realdata clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(DEMO_DATA)/leads.csv: | $(VENV)/.installed
	$(CLI) generate --out $(DEMO_DATA) --leads $(DEMO_LEADS) --seed 42

demo: $(VENV)/.installed $(DEMO_DATA)/leads.csv
	$(CLI) validate --data $(DEMO_DATA)
	$(CLI) train --data $(DEMO_DATA)
	$(CLI) promote
	$(CLI) score --data $(DEMO_DATA) --as-of $(DEMO_AS_OF) --out $(DEMO_CRM) --top 10
	$(CLI) report --data $(DEMO_DATA) --as-of $(DEMO_AS_OF) --out $(DEMO_REPORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: $(VENV)/.installed-dev lint
	bash tests/setup-services.sh
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/features.py

clean:
	rm -rf $(DEMO_DATA) data/crm.db mlflow.db mlruns rejects.csv reports
