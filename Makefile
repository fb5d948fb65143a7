# Two commands on a machine with only Python >= 3.11 and pip:
#   make serve   set up .venv and start the server on http://127.0.0.1:8000 (/mcp and /sse)
#   make test    set up .venv and run the whole test suite: lint, the unit tier, the integration tier
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: serve test unit integration lint bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The runtime: the default install, numpy, pandas and matplotlib included.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Runtime plus test tools (a superset of the serve set).
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.serve

# The browser tests (tests/integration/test_watch_*.py) drive Debian's chromium through
# playwright: playwright's own browser download cannot reach its servers from every
# machine, and the distribution's build is kept up to date by apt.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make: $(CHROMIUM) is missing; as root: apt-get install -y chromium" >&2; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

chromium: $(CHROMIUM)

serve: $(VENV)/.serve
	$(BIN)/kernel-mcp serve

test: $(VENV)/.test $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests/unit
	$(BIN)/python -m pytest tests/integration

# The unit tier alone: no kernel process, under a minute.
unit: $(VENV)/.test
	$(BIN)/python -m pytest tests/unit

# The integration tier alone: real kernels, transports, the gateway, Redis.
integration: $(VENV)/.test $(CHROMIUM)
	$(BIN)/python -m pytest tests/integration

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.test
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
