# Lepton Edge. Quickstart: `make run` (the whole loop on this machine), `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
AGENT := $(VENV)/bin/lepton-agent
APT_PACKAGES := python3-venv python3-dev mosquitto gcc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages run test test-slow test-all lint model bench clean

## Install what the agent needs: Debian packages (where apt is there), then a venv.
setup: $(VENV)/.installed

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing \
	      || echo "warning: could not install$$missing; the demo then runs offline"; \
	  else echo "warning: no apt-get; install$$missing yourself"; fi; \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

## The main job on the embedded default: clip -> agent -> mosquitto -> ingest, with a summary.
run: setup
	$(AGENT) demo

## Default test tier (fast unit tests + real-broker tier); slow tiers are marked `slow`.
test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check agent tests models
	$(VENV)/bin/mypy agent

## Rebuild the default model from generated data (installs tensorflow-cpu in .venv-train).
model:
	@test -x .venv-train/bin/python || python3 -m venv .venv-train
	.venv-train/bin/python -m pip install -q 'tensorflow-cpu>=2.16' numpy opencv-python-headless
	.venv-train/bin/python models/make_default_model.py --out models/lepton-vehicles-tiny

bench: setup
	$(AGENT) bench pipeline --json

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
