#!/usr/bin/env bash
# make e2e: build the images, bring docker-compose.yml up with a real Docker engine (2 rnnserve
# replicas, Redis, the nginx load balancer, Prometheus) and check it through the load
# balancer's published port (e2e/check.py); `docker-compose down -v` at the end, also on failure.
#
# Works where Docker Hub and PyTorch's index cannot be reached (this project's CI machines):
#   - the base image is Debian bookworm made by debootstrap and `docker import`ed
#     (rnnserve-base:bookworm; its tarball is cached in $E2E_CACHE);
#   - redis, nginx and prometheus are Debian's packages built FROM that base
#     (e2e/standins.Dockerfile), passed to docker-compose.yml as REDIS_IMAGE etc.;
#   - the Python packages (torch's CPU wheel included) are `pip wheel`ed here, by this machine's
#     pip and its configuration, into a local package index served on 127.0.0.1 to
#     `docker build --network host` (the Dockerfile's PIP_INDEX_URL / TORCH_INDEX_URL).
# With E2E_OFFICIAL_IMAGES=1 the public images and indexes are used instead (no stand-ins).
#
# Needs root (or a reachable Docker engine), docker, docker-compose (1.29 or v2), debootstrap.
# If no engine is reachable and we are root, dockerd is started (E2E_DOCKERD_ARGS) and stopped
# again at the end; if none can run, this says why and exits 1.
#
# Environment: E2E_CACHE (default ~/.cache/rnnserve-e2e), E2E_KEEP=1 (leave the stack up),
# DEBIAN_MIRROR, E2E_EXTRA_CA_FILE (PEM passed as EXTRA_CA_CERTS), E2E_COMPOSE (the compose
# command), E2E_DOCKERD_ARGS (default: overlay2, else vfs; --iptables=false --bridge=none).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

START=$(date +%s)
say() { printf '[e2e %4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

E2E_CACHE=${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rnnserve-e2e}
BASE_IMAGE=rnnserve-base:bookworm
STANDIN_TAG=bookworm
PROJECT=${COMPOSE_PROJECT_NAME:-rnnserve-e2e}
# No iptables rules and no default docker0 bridge: compose networks and published ports (by
# docker-proxy) work without them, and nothing of the host's firewall is touched.
DOCKERD_NET="--iptables=false --bridge=none"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
mkdir -p "$E2E_CACHE"

for tool in docker curl; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install docker.io curl)"
done
if [ -n "${E2E_COMPOSE:-}" ]; then
  read -r -a COMPOSE <<<"$E2E_COMPOSE"
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  die "neither docker-compose nor 'docker compose' is installed (apt-get install docker-compose)"
fi
[ -x "$PYTHON" ] || die "$PYTHON is missing: run make setup first"

# --- a container engine ---------------------------------------------------------------------
DOCKERD_PID=""
INDEX_PID=""
cleanup() {
  local rc=$?
  if [ -n "${STACK_UP:-}" ]; then
    if [ "$rc" -ne 0 ]; then
      say "logs of the failed run (last 40 lines per service):"
      "${COMPOSE[@]}" -p "$PROJECT" logs --no-color --tail=40 2>&1 | sed 's/^/    /' || true
    fi
    if [ -n "${E2E_KEEP:-}" ]; then
      say "E2E_KEEP is set: the stack stays up (${COMPOSE[*]} -p $PROJECT down -v)"
    else
      say "docker-compose down -v"
      "${COMPOSE[@]}" -p "$PROJECT" down -v --remove-orphans >/dev/null 2>&1 || true
    fi
  fi
  [ -z "$INDEX_PID" ] || kill "$INDEX_PID" 2>/dev/null || true
  if [ -n "$DOCKERD_PID" ] && [ -z "${E2E_KEEP:-}" ]; then
    say "stopping the dockerd this run started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  fi
  say "exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || die "no Docker engine is reachable ($(docker info 2>&1 | tail -1)) and \
this is not root, so none can be started here; start dockerd or run as root"
  command -v dockerd >/dev/null || die "no Docker engine is reachable and dockerd is not \
installed (apt-get install docker.io)"
  # overlay2 first (fast builds); vfs where overlay mounts are not allowed (slow, but it runs).
  for args in "${E2E_DOCKERD_ARGS:-}" "--storage-driver=overlay2 $DOCKERD_NET" "--storage-driver=vfs $DOCKERD_NET"; do
    [ -n "$args" ] || continue
    say "starting dockerd $args (log: $E2E_CACHE/dockerd.log)"
    # shellcheck disable=SC2086
    dockerd $args >"$E2E_CACHE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      kill -0 "$DOCKERD_PID" 2>/dev/null || break
      sleep 1
    done
    if docker info >/dev/null 2>&1; then
      break
    fi
    tail -5 "$E2E_CACHE/dockerd.log" | sed 's/^/    dockerd: /' >&2
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=""
    [ -z "${E2E_DOCKERD_ARGS:-}" ] || break
  done
  [ -n "$DOCKERD_PID" ] || die "dockerd could not start a container engine on this machine \
(its log lines are above; full log: $E2E_CACHE/dockerd.log)"
fi
say "docker engine $(docker version --format '{{.Server.Version}}'), compose: ${COMPOSE[*]} \
($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

# --- images ---------------------------------------------------------------------------------
build() {  # build <what> <docker build args...>
  local what=$1; shift
  local t0; t0=$(date +%s)
  say "building $what"
  if ! docker build --force-rm --network host "$@" >"$E2E_CACHE/build-$what.log" 2>&1; then
    tail -30 "$E2E_CACHE/build-$what.log" | sed 's/^/    /' >&2
    die "docker build of $what failed (log: $E2E_CACHE/build-$what.log)"
  fi
  say "built $what in $(($(date +%s) - t0)) s"
}

export RNNSERVE_IMAGE_TAG=e2e
if [ -n "${E2E_OFFICIAL_IMAGES:-}" ]; then
  build_args=()
  unset REDIS_IMAGE NGINX_IMAGE PROMETHEUS_IMAGE
else
  # The base: Debian bookworm by debootstrap (cached tarball), imported once per engine.
  if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    tarball=$E2E_CACHE/bookworm-minbase.tar
    if [ ! -s "$tarball" ]; then
      command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
      mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/*$/\1/p;s/^deb \[*[^ ]*\]* *\(http[^ ]*\/debian\)\/* bookworm .*/\1/p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -1)}
      mirror=${mirror:-http://deb.debian.org/debian}
      say "debootstrap bookworm from $mirror (a few minutes; cached as $tarball)"
      rootfs=$E2E_CACHE/rootfs.tmp
      rm -rf "$rootfs"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
        "$rootfs" "$mirror" >"$E2E_CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$E2E_CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
      rm -f "$rootfs"/var/cache/apt/archives/*.deb
      tar -C "$rootfs" -c . >"$tarball.tmp" && mv "$tarball.tmp" "$tarball"
      rm -rf "$rootfs"
    fi
    say "docker import $tarball as $BASE_IMAGE"
    docker import "$tarball" "$BASE_IMAGE" >/dev/null
  fi
  for target in redis nginx prometheus; do
    if ! docker image inspect "rnnserve-e2e/$target:$STANDIN_TAG" >/dev/null 2>&1; then
      build "$target" --build-arg BASE_IMAGE="$BASE_IMAGE" --target "$target" \
        -f e2e/standins.Dockerfile -t "rnnserve-e2e/$target:$STANDIN_TAG" e2e
    fi
  done
  export REDIS_IMAGE=rnnserve-e2e/redis:$STANDIN_TAG
  export NGINX_IMAGE=rnnserve-e2e/nginx:$STANDIN_TAG
  export PROMETHEUS_IMAGE=rnnserve-e2e/prometheus:$STANDIN_TAG

  # A local package index with every wheel the image needs, made by this machine's pip (which
  # knows its own indexes, proxy CA and the torch CPU wheel), keyed by pyproject.toml. pip must
  # run on the base image's Python version: dependencies carry markers such as
  # python_full_version < "3.11.3" (Debian bookworm has 3.11.2).
  base_python=$(docker run --rm --network none "$BASE_IMAGE" python3 -c 'import platform; print(platform.python_version())')
  WHEEL_PYTHON=${E2E_WHEEL_PYTHON:-/usr/bin/python3}
  host_python=$("$WHEEL_PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo none)
  [ "$host_python" = "$base_python" ] || die "the base image has Python $base_python but \
$WHEEL_PYTHON is $host_python: set E2E_WHEEL_PYTHON to a Python $base_python with pip"
  key=$(cat pyproject.toml <(echo "$base_python") | sha256sum | cut -c1-16)
  index=$E2E_CACHE/index-$key
  if [ ! -d "$index/simple" ]; then
    say "pip wheel (Python $base_python): the image's packages into a local index ($index)"
    rm -rf "$index.tmp" && mkdir -p "$index.tmp/wheels"
    "$WHEEL_PYTHON" -m pip wheel --quiet --wheel-dir "$index.tmp/wheels" . "setuptools>=68" wheel \
      >"$E2E_CACHE/pip-wheel.log" 2>&1 \
      || { grep -v '^WARNING: Location' "$E2E_CACHE/pip-wheel.log" | tail -20 >&2; die "pip wheel failed"; }
    rm -f "$index.tmp"/wheels/rnnserve-*.whl  # the image installs the project from its source
    for wheel in "$index.tmp"/wheels/*.whl; do  # PEP 503 layout: simple/<normalized name>/
      name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
      mkdir -p "$index.tmp/simple/$name" && ln "$wheel" "$index.tmp/simple/$name/"
    done
    mv "$index.tmp" "$index"
  fi
  # The index URL is a build argument, so it is part of docker's layer cache key: a port fixed
  # by the index's key keeps the torch layer cached from run to run (a free one if it is taken).
  port=$("$PYTHON" -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", 20000 + int(sys.argv[1], 16) % 20000))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "${key:0:8}")
  "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$index" "$port" >"$E2E_CACHE/index.log" 2>&1 &
  INDEX_PID=$!
  for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$port/simple/" >/dev/null 2>&1 && break; sleep 0.2; done
  build_args=(--build-arg BASE_IMAGE="$BASE_IMAGE"
              --build-arg PIP_INDEX_URL="http://127.0.0.1:$port/simple"
              --build-arg TORCH_INDEX_URL="http://127.0.0.1:$port/simple")
fi
if [ -n "${E2E_EXTRA_CA_FILE:-}" ]; then
  build_args+=(--build-arg EXTRA_CA_CERTS="$(cat "$E2E_EXTRA_CA_FILE")")
fi
build rnnserve "${build_args[@]}" -t "rnnserve:$RNNSERVE_IMAGE_TAG" .
[ -z "$INDEX_PID" ] || { kill "$INDEX_PID" 2>/dev/null || true; INDEX_PID=""; }

# --- the stack ------------------------------------------------------------------------------
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export BIND_ADDRESS=127.0.0.1
LB_PORT=$(free_port); PROMETHEUS_PORT=$(free_port); GRAFANA_PORT=$(free_port)
export LB_PORT PROMETHEUS_PORT GRAFANA_PORT
say "docker-compose up -d --scale rnnserve=2 (lb on 127.0.0.1:$LB_PORT, prometheus on 127.0.0.1:$PROMETHEUS_PORT)"
"${COMPOSE[@]}" -p "$PROJECT" down -v --remove-orphans >/dev/null 2>&1 || true
STACK_UP=1
# Grafana is left out: its image has no Debian stand-in (its dashboard is checked by
# tests/deploy/test_dashboard.py against a real Prometheus instead).
"${COMPOSE[@]}" -p "$PROJECT" up -d --no-build --scale rnnserve=2 redis rnnserve lb prometheus
"${COMPOSE[@]}" -p "$PROJECT" ps

say "checking through the load balancer"
"$PYTHON" e2e/check.py --target "127.0.0.1:$LB_PORT" --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" \
  --compose "${COMPOSE[*]} -p $PROJECT"
say "all end-to-end checks passed"
