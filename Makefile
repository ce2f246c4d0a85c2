# svcfp — make targets users of P4 testbeds expect. `make` creates and reuses the virtual
# environments itself; nobody has to activate anything.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Debian's interpreter: Mininet's Python module is installed for it only.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV ?= .venv
VENV_PTF ?= .venv-ptf
PY := $(VENV)/bin/python
PY_PTF := $(VENV_PTF)/bin/python

P4SRC := p4src/fingerprint.p4
P4INFO := p4src/fingerprint.p4info.txtpb
P4SRC_TNA := p4src/fingerprint_tna.p4
P4INFO_TNA := p4src/fingerprint_tna.p4info.txtpb
BUILD := p4src/build
# p4c's output for the default sizes is committed beside the source; a build with P4FLAGS
# (-D overrides) goes to $(BUILD) instead.
BUILD_OUT = $(if $(strip $(P4FLAGS)),$(BUILD),p4src)

SWITCH ?= refswitch
TARGET ?= refswitch
GRPC_ADDR ?= 127.0.0.1:9559
DEVICE_ID ?= 0
LOGS := logs

.PHONY: help venv venv-ptf lock demo test check-fresh build tofino-layouts ptf run stop shell lint bench clean

help:
	@echo "make demo    the main job: emulated IoT devices identified live (reference switch by default; SWITCH=bmv2)"
	@echo "make test    the test suite (unit, gRPC end-to-end, PTF and Mininet where root is available)"
	@echo "make check-fresh  make demo and make test on a fresh clone, without mininet and tcpreplay"
	@echo "make build   compile $(P4SRC) with p4c (if on PATH) into the committed P4Info and BMv2 JSON"
	@echo "             TARGET=tofino: compile $(P4SRC_TNA) with the Tofino compiler (/opt/p4tofino)"
	@echo "make tofino-layouts  the largest MAX_DEVICES x MAX_SERVICES that fit Tofino 1 and 2"
	@echo "make ptf     PTF regression suite against TARGET=refswitch|bmv2"
	@echo "make run     start a switch and the controller in the background (SWITCH=refswitch|bmv2)"
	@echo "make stop    stop what 'make run' or 'make demo' started and remove what they created"
	@echo "make shell   p4runtime-shell on a running switch with the project's P4Info"
	@echo "make lint    ruff and mypy"
	@echo "make bench   benchmarks (results under benchmarks/results/)"
	@echo "make lock    regenerate requirements.lock and ptf_tests/requirements.lock"
	@echo "make clean   remove build output, logs and virtual environments"

# LOCK=1 (what CI does) installs the exact versions of requirements.lock first; without it pip
# resolves the ranges pyproject.toml gives, as a user's install would.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -d $(VENV) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(LOCK),$(PY) -m pip install --quiet -r requirements.lock)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# PTF and p4runtime-shell pin an old protobuf; they live apart from the controller's environment.
$(VENV_PTF)/.installed: ptf_tests/requirements.txt ptf_tests/requirements.lock
	test -d $(VENV_PTF) || $(PYTHON) -m venv $(VENV_PTF)
	$(PY_PTF) -m pip install --quiet --upgrade pip
	$(PY_PTF) -m pip install --quiet -r $(if $(LOCK),ptf_tests/requirements.lock,ptf_tests/requirements.txt)
	touch $@

venv-ptf: $(VENV_PTF)/.installed

# Regenerate both lock files from pyproject.toml and ptf_tests/requirements.txt (needs PyPI).
lock: venv
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile --quiet pyproject.toml --extra dev --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 -o requirements.lock
	$(VENV)/bin/uv pip compile --quiet ptf_tests/requirements.txt --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 -o ptf_tests/requirements.lock

# Without root or Mininet the demo replays the devices' traffic through the reference switch and
# says why; DEMO_ARGS passes further `svcfp demo` flags.
demo: venv
	$(VENV)/bin/svcfp demo --switch $(SWITCH) $(DEMO_ARGS)

test: venv venv-ptf
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	  if [ $$status -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$status

# The README's two commands on a clone of HEAD, where mininet and tcpreplay are not installed.
check-fresh: venv
	@clone=$$(mktemp -d /tmp/svcfp-fresh-XXXXXX) && trap 'rm -rf "$$clone"' EXIT && \
	  git clone --quiet . "$$clone" && \
	  $(PY) -m tests.support.absent $(MAKE) -C "$$clone" demo DEMO_ARGS="--units 36 --grpc-port 0" && \
	  $(PY) -m tests.support.absent $(MAKE) -C "$$clone" test

# TARGET=tofino compiles the TNA program for Tofino 1 and 2 instead (skipped, saying so, where
# the Tofino compiler is not installed): its P4Info and the resource table of p4src/README.md.
build: venv
ifeq ($(TARGET),tofino)
	$(PY) -m controller.p4rt.tofino build --p4 $(P4SRC_TNA) --p4info $(P4INFO_TNA) \
	    --out $(BUILD)/tofino --readme p4src/README.md
else
	$(PY) -m controller.p4rt.build --p4 $(P4SRC) --p4info $(P4INFO) --out $(BUILD_OUT) $(P4FLAGS)
endif

# Compiles at increasing sizes (a few minutes) and rewrites the layout table of p4src/README.md.
tofino-layouts: venv
	$(PY) -m controller.p4rt.tofino layouts --p4 $(P4SRC_TNA) --out $(BUILD)/layouts \
	    --readme p4src/README.md

ptf: venv venv-ptf
	$(PY) -m ptf_tests.runner --target $(TARGET) --logs $(LOGS)

run: venv
	$(VENV)/bin/svcfp testbed start --switch $(SWITCH) --grpc-addr $(GRPC_ADDR) --device-id $(DEVICE_ID) --logs $(LOGS)

stop: venv
	$(VENV)/bin/svcfp testbed stop --logs $(LOGS)

# Attaches to the pipeline already on the switch (no --config: that would re-push and wipe it),
# with an election id below the controller's so the controller stays primary.
shell: venv-ptf
	$(PY_PTF) -m p4runtime_sh --grpc-addr $(GRPC_ADDR) --device-id $(DEVICE_ID) --election-id 0,1

lint: venv venv-ptf
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	cd ptf_tests && MYPYPATH=.:.. ../$(PY) -m mypy --config-file mypy.ini --python-executable ../$(PY_PTF) \
	    base.py forwarding.py services.py robustness.py

bench: venv
	$(PY) -m benchmarks.run

clean:
	rm -rf $(BUILD) $(LOGS) $(VENV) $(VENV_PTF) .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
