#!/usr/bin/env bash
# Runs scripts/benchmark_accelerator.py on an offline accelerator host, from the
# folder scripts/prepare_accelerator.py wrote, and copies what it made to RESULTS.
#
#   bash scripts/run_accelerator.sh CARRIED RESULTS [benchmark options, e.g. --minutes 8]
#
# 1. installs the carried wheels (ml-collections, tensorboardX; protobuf and packaging
#    only where the host lacks them) into a target folder, with pip if the host has
#    it, else by unpacking them (pure-Python wheels are zip files): no network;
# 2. puts the repository and that folder on PYTHONPATH (the package is not installed,
#    so its version pins do not apply) and runs the benchmark on CARRIED's data and
#    weights, its log teed to WORK/benchmark.log;
# 3. copies results.json, benchmark.log and each trained model's params.msgpack and
#    config.json (RESULTS/<name>/) into RESULTS: at most 8 files, results first.
# Environment: PYTHON (default python3), WORK (default a fresh folder under /tmp).
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 2 ]; then
  echo "usage: $0 CARRIED RESULTS [benchmark options]" >&2
  exit 2
fi
carried=$(cd "$1" && pwd) || { echo "error: $1 is not a folder" >&2; exit 2; }
mkdir -p "$2" && results=$(cd "$2" && pwd)
shift 2
python=${PYTHON:-python3}
work=${WORK:-$(mktemp -d /tmp/percvae_accelerator.XXXXXX)}
target="$work/site"
mkdir -p "$target"

install_wheel() {  # pip without network or index; else unzip (a pure wheel is a zip).
  "$python" -m pip install --quiet --no-index --no-deps --target "$target" "$1" 2>/dev/null \
    || "$python" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
         "$1" "$target"
}
for wheel in "$carried"/wheels/required/*.whl; do
  [ -e "$wheel" ] && install_wheel "$wheel"
done
for pair in "google.protobuf:protobuf" "packaging:packaging"; do
  module=${pair%%:*}; name=${pair##*:}
  if ! "$python" -c "import $module" 2>/dev/null; then
    for wheel in "$carried"/wheels/fallback/"$name"-*.whl; do
      [ -e "$wheel" ] && install_wheel "$wheel" && echo "installed $(basename "$wheel")"
    done
  fi
done
export PYTHONPATH="$repo:$target${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import ml_collections, tensorboardX, jax; print('python', __import__('sys').version.split()[0], 'jax', jax.__version__, jax.devices())" \
  || echo "warning: an import failed; the benchmark records what it can" >&2

cd "$repo"
"$python" scripts/benchmark_accelerator.py --carried "$carried" --output "$work/out" "$@" 2>&1 \
  | tee "$work/benchmark.log"
status=${PIPESTATUS[0]}

copied=0
copy() {  # copy SOURCE DEST_RELATIVE: within the 8 files that come back.
  if [ -f "$1" ] && [ "$copied" -lt 8 ]; then
    mkdir -p "$(dirname "$results/$2")" && cp "$1" "$results/$2" && copied=$((copied + 1))
  elif [ -f "$1" ]; then
    echo "not copied (8 files already): $1" >&2
  fi
}
copy "$work/out/results.json" results.json
copy "$work/benchmark.log" benchmark.log
for model in "$work"/out/models/*/; do
  [ -d "$model" ] || continue
  name=$(basename "$model")
  copy "$model/params.msgpack" "$name/params.msgpack"
  copy "$model/config.json" "$name/config.json"
done
echo "copied $copied files to $results (all files in $work)"
exit "$status"
