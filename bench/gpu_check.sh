#!/usr/bin/env bash
# The one-shot device check on a lent GPU machine (docs/gpu.md), as one command:
#   bash bench/gpu_check.sh [bench.gpu_check flags]
# That machine has its own Python 3.12 and torch and no network: the packages it lacks travel as
# cp312 wheels in .whl/ (`make wheels` here, which also builds rnnserve's own wheel), and the
# training data beside the checkout (../shared/data, which does not travel) in .gpu/data/
# (`make wheels` copies it). Writes $OUT/gpu_check.json (OUT: the device tool's folder; /tmp
# elsewhere) after every part, so what finished survives a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
# what the machine already has (its own versions): never shadow them
have='/(numpy|ml_dtypes|setuptools|wheel|typing_extensions|pytest|pluggy|iniconfig|pygments|hypothesis|sortedcontainers|pytest_timeout|packaging|urllib3|attrs|pyyaml|tqdm|prometheus_client)-[0-9]'
mapfile -t wheels < <(ls .whl/*.whl | grep -v -i -E "$have")
echo "[gpu_check.sh] installing ${#wheels[@]} wheels" >&2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "${wheels[@]}"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if [ ! -d ../shared/data ] && [ -d .gpu/data ]; then
    mkdir -p ../shared && cp -r .gpu/data ../shared/data
fi
python3 -c "import torch, rnnserve.server.app; print('[gpu_check.sh] torch', torch.__version__,
'cuda', torch.cuda.is_available())" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >&2 || true
exec timeout "${GPU_CHECK_TIMEOUT:-400}" python3 -m bench.gpu_check --device cuda \
    --out "$out/gpu_check.json" "$@"
