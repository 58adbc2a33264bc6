PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint proto bench soak clean e2e

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

# Load past the admission limits for 2 minutes on loopback; exits 1 on a leak or a bad status.
soak: setup
	$(BIN)/python -m bench.soak --duration 120

# The compose stack run for real: builds the images, `docker-compose up` with 2 replicas, Redis,
# the nginx load balancer and Prometheus, checks it through the load balancer (e2e/check.py),
# then `docker-compose down -v`. Needs a Docker engine (started here when run as root), docker-compose
# and debootstrap; see e2e/run.sh and docs/deploy.md.
e2e: setup
	bash e2e/run.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

.PHONY: deploy-check
# The deployment proofs alone (tests/deploy/): compose config, promtool, a live Prometheus
# scraping a test server, the Grafana dashboard, the Dockerfile, buf lint/breaking.
# Needs docker-compose, prometheus (apt) and buf (npm); see docs/deploy.md.
deploy-check: setup
	test -x node_modules/.bin/buf || npm install --no-save --no-audit --no-fund
	$(BIN)/python -m pytest -q tests/deploy
