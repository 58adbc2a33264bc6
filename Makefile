PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint proto bench bench-peers soak clean gpu-check wheels e2e

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "make setup: creating $(VENV) (about 1-2 minutes: torch, grpcio, ...)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "make setup: [1/2] pip, setuptools, wheel"
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=68" wheel
	@echo "make setup: [2/2] rnnserve and its dependencies (.[dev])"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)
	@echo "make setup: done; commands are in $(BIN)/ (or: source $(BIN)/activate)"

# Flags for `make serve`, e.g. make serve SERVE_ARGS="--port 50052 --metrics-port 8001"
SERVE_ARGS ?=

serve: setup
	$(BIN)/rnnserve serve --model-repository model_repository $(SERVE_ARGS)

# The tests need buf (tests/deploy/test_buf.py), pinned in package.json/package-lock.json:
# installed here, so that `make test` is one command on a laptop and in CI alike.
test: setup node_modules/.bin/buf
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# `npm install --no-save` rather than `npm ci`: the registry mirror serves only the Linux builds
# of buf's per-platform optional packages, so package-lock.json cannot list the others and
# `npm ci` refuses it. --no-save installs exactly the locked versions and never rewrites the lock.
# Without npm the buf tests skip (or fail under CI=true, where .ci/run installs npm with apt).
node_modules/.bin/buf: package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  echo "installing buf (npm, package-lock.json)"; \
	  npm install --no-save --no-audit --no-fund && touch $@; \
	else echo "npm not found: the buf tests will not run (apt-get install npm)"; fi

lint: setup
	$(BIN)/ruff check .

proto: setup
	$(BIN)/python -m rnnserve.v1.regenerate

bench: setup
	$(BIN)/python -m bench.run

# Classify against Seldon MLServer on the same model (docs/bench.md); MLServer gets its own venv.
PEERS_VENV := .venv/peers
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): bench/peers-requirements.txt pyproject.toml
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers-requirements.txt
	$(PEERS_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(PEERS_STAMP)

bench-peers: setup $(PEERS_STAMP)
	$(BIN)/python -m bench.peers

# One-shot device check (docs/gpu.md): JSON in bench/results/gpu_check.json. On a machine without a
# GPU: make gpu-check GPU_CHECK_FLAGS="--device cpu --quick"
GPU_CHECK_FLAGS ?= --device cuda
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) -m bench.gpu_check $(GPU_CHECK_FLAGS)

# cp312 manylinux wheels of the project's dependencies (not torch) for the GPU machine: .whl/
# (git-ignored; docs/gpu.md says how the device machine installs them with no network)
WHEEL_PKGS := numpy grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
	"protobuf>=6.31,<8" prometheus-client pydantic pydantic-settings tqdm jsonschema pytest \
	pytest-asyncio pytest-timeout hypothesis pyyaml cryptography "setuptools>=68" wheel redis \
	hiredis tritonclient==2.73.0 ml-dtypes python-rapidjson urllib3 packaging
wheels: setup
	$(BIN)/python -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
		--abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_28_x86_64 -d .whl $(WHEEL_PKGS)
	rm -f .whl/rnnserve-*.whl
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
	rm -rf .gpu/data && mkdir -p .gpu && cp -r ../shared/data .gpu/data

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
deploy-check: setup node_modules/.bin/buf
	$(BIN)/python -m pytest -q tests/deploy
