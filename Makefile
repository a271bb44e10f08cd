# Two commands on a fresh machine:
#   make book   set up .venv and build the whole book on the embedded default study
#   make test   set up .venv (+ test tools) and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
BIDS_VALIDATOR_VERSION := 1.15.0

# Real data (PAM50, OpenNeuro metadata): the loaders download them at pinned versions;
# a local copy beside the repository (../shared/data, as on the project's machines) is
# used instead when it exists. Set SPINEPRINT_DATA_DIR yourself to point elsewhere.
ifeq ($(SPINEPRINT_DATA_DIR),)
  ifneq ($(wildcard ../shared/data/pam50),)
    export SPINEPRINT_DATA_DIR := $(abspath ../shared/data)
  endif
endif

.PHONY: book test setup setup-test tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.stamp-book: pyproject.toml binder/requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c binder/requirements.txt -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml binder/requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c binder/requirements.txt -e ".[test]"
	touch $@ $(VENV)/.stamp-book

setup: $(VENV)/.stamp-book
setup-test: $(VENV)/.stamp-test tools

# Test tools: Debian's Chromium for the browser tests (installed when we are root,
# as in CI) and the bids-validator npm package for the BIDS checks.
tools:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "NOTE: chromium not installed and not root: browser tests will be skipped"; \
	  fi; \
	fi
	@if [ ! -x .tools/node_modules/.bin/bids-validator ]; then \
	  if command -v npm >/dev/null 2>&1; then \
	    echo "installing bids-validator@$(BIDS_VALIDATOR_VERSION) into .tools"; \
	    npm install --silent --no-audit --no-fund --prefix .tools bids-validator@$(BIDS_VALIDATOR_VERSION) >/dev/null; \
	  else \
	    echo "NOTE: npm not found: BIDS validation tests will be skipped"; \
	  fi; \
	fi

book: setup
	$(BIN)/spineprint build

test: setup-test
	$(BIN)/python -m pytest -ra

clean:
	rm -rf _build
