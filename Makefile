# Two entry points that do all the set-up on a fresh Debian machine with Python 3.11:
#   make ring   - a local ring of 5 peers in the foreground (Ctrl-C: they leave gracefully)
#   make test   - ruff, mypy and the whole pytest suite
# Installation is idempotent: the venv is created once, pip runs again only when
# pyproject.toml changes (stamp files under .venv).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.stamp-run
TEST_STAMP := $(VENV)/.stamp-test
RING_NODES ?= 5
# RING_PORT=7000 make ring: stable addresses, peer K on RING_PORT+3K (overlay), +1 (admin), +2 (SIP)
RING_PORT ?=
PYTEST_ARGS ?=

.PHONY: ring test lint typecheck pytest tools clean-ring help

help:
	@echo "make ring   start a local ring of $(RING_NODES) peers (Ctrl-C leaves gracefully)"
	@echo "make test   install test deps and tools, then ruff, mypy and pytest"

# Debian's python3 has no ensurepip until python3-venv is installed; a failed attempt leaves a
# half-made venv behind, so it is removed before trying again.
$(PY):
	@$(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing python3-venv (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv \
	      && $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "error: '$(PYTHON) -m venv' failed; install python3-venv (as root)" >&2; \
	    exit 1; \
	  fi; \
	}

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[fast]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,fast]'
	touch $@ $(RUN_STAMP)

ring: $(RUN_STAMP)
	$(PY) scripts/ring.py --nodes $(RING_NODES) $(if $(RING_PORT),--base-port $(RING_PORT))

# The Debian tools the tests need. Installed only when missing, and only where apt-get can run
# as root; anywhere else we say what to install instead of failing obscurely later.
# tshark/dumpcap (wire checks), sipp (SIP clients), kamailio (baseline), faketime (clock jumps
# in the nemesis harness), chromium (the ring page test), iproute2 (network namespaces),
# systemd (systemd-analyze verify of the packaged unit).
TOOLS_DEB := tshark sip-tester kamailio faketime chromium iproute2 systemd

tools:
	@missing=""; \
	command -v tshark >/dev/null 2>&1 && command -v dumpcap >/dev/null 2>&1 || missing="$$missing tshark"; \
	command -v sipp >/dev/null 2>&1 || missing="$$missing sip-tester"; \
	{ command -v kamailio || test -x /usr/sbin/kamailio; } >/dev/null 2>&1 || missing="$$missing kamailio"; \
	command -v faketime >/dev/null 2>&1 || missing="$$missing faketime"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	{ command -v ip || test -x /usr/sbin/ip; } >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $(TOOLS_DEB); \
	  else \
	    echo "error: missing Debian packages:$$missing; install them as root: apt-get install $(TOOLS_DEB)" >&2; \
	    exit 1; \
	  fi; \
	fi

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(TEST_STAMP)
	$(VENV)/bin/mypy

# pytest's exit code 5 (no tests collected) fails the target like any other non-zero code.
pytest: $(TEST_STAMP) tools
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean-ring:
	rm -rf .ring

# The nemesis harness of issue 14 (as root: network namespaces, a bridge, libfaketime):
#   make nemesis SEED=7 MINUTES=30   (SEED empty: a random one, printed; the summary says where
#   the history, the node logs and summary.json are). Exit 1 when the checker found anything.
SEED ?=
MINUTES ?= 5
.PHONY: nemesis
nemesis: $(TEST_STAMP) tools
	$(PY) scripts/nemesis/run.py $(if $(SEED),--seed $(SEED)) --minutes $(MINUTES)
