PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint proto bench bench-peers soak clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: setup
	$(BIN)/rnnserve serve --model-repository model_repository

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

proto: setup
	$(BIN)/python -m rnnserve.v1.regenerate

bench: setup
	$(BIN)/python -m bench.run

# Classify against Seldon MLServer on the same model (docs/bench.md); MLServer gets its own venv.
PEERS_VENV := bench/.peers-venv
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): bench/peers-requirements.txt pyproject.toml
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers-requirements.txt
	$(PEERS_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(PEERS_STAMP)

bench-peers: setup $(PEERS_STAMP)
	$(BIN)/python -m bench.peers

# Load past the admission limits for 2 minutes on loopback; exits 1 on a leak or a bad status.
soak: setup
	$(BIN)/python -m bench.soak --duration 120

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

.PHONY: deploy-check
# The deployment proofs alone (tests/deploy/): compose config, promtool, a live Prometheus
# scraping a test server, the Grafana dashboard, the Dockerfile, buf lint/breaking.
# Needs docker-compose, prometheus (apt) and buf (npm); see docs/deploy.md.
deploy-check: setup
	test -x node_modules/.bin/buf || npm install --no-save --no-audit --no-fund
	$(BIN)/python -m pytest -q tests/deploy
