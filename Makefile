# Ludus developer commands. A fresh machine needs only `make demo` and `make test`.
PYTHON_BIN ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build from local disk by default; GPU hosts: make TORCH_SPEC="torch==2.13.0 --index-url <cuda index>"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast proto proto-check proto-compat bench bench-full bench-sac clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[server,gym,dev,bench]"
	touch $(STAMP)

install: $(STAMP)

## Train CartPole-v1 through a local Ludus server until solved (mean return >= 475 over 20 episodes).
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

## Full test suite, learning tests included (CI runs this).
test: $(STAMP)
	$(PY) -m pytest -q -ra

## Everything except the learning tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not learning"

## Regenerate the gRPC stubs from proto/ (tests fail if the committed stubs drift).
proto: $(STAMP)
	PYTHON=$(PY) bash scripts/gen_proto.sh

## Check proto/ stays backward compatible with proto/compat/ludus_v1.snapshot.json (exit 1: breaking,
## 2: compatible changes not yet recorded). After an intentional addition: make proto-compat ARGS=--update
proto-compat: $(STAMP)
	$(PY) scripts/proto_compat.py $(ARGS)

bench: $(STAMP)
	$(PY) -m bench.run --short

bench-full: $(STAMP)
	$(PY) -m bench.run --full

## SAC vs Stable-Baselines3 SAC on Pendulum-v1, 20k steps (about 10 min per seed on 2 cores).
bench-sac: $(STAMP)
	$(PY) -m bench.run --short --only sac

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
