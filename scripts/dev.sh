#!/usr/bin/env bash
# One entry point that sets everything up on a fresh machine, then runs the main job or the tests.
#   bash scripts/dev.sh example   # set up, then run the MNIST example end to end (distill -> export -> bench -> gates)
#   bash scripts/dev.sh test      # set up, then run the test suite (what .ci/run runs)
#   bash scripts/dev.sh setup     # set up only
# Idempotent: the virtual environment, the install and the offline data are reused when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${ONDEVICE_VENV:-$ROOT/.venv}
export ONDEVICE_DATA=${ONDEVICE_DATA:-$HOME/.cache/ondevice}

log() { printf '\n== %s\n' "$*" >&2; }

setup_system() {
  # Debian packages: the Fashion-MNIST and WordNet datasets, and headless Chromium for the report-rendering test.
  local need=()
  [ -e /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need+=(dataset-fashion-mnist)
  [ -e /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "apt-get install ${need[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
    else
      echo "warning: missing Debian packages (${need[*]}); install them with: sudo apt-get install -y ${need[*]}" >&2
    fi
  fi
}

setup_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools
  fi
  local stamp="$VENV/.ondevice-install" want
  want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "pip install -e '.[all,dev]' (torch 2.13.0 CPU build; about 3 minutes on a cold machine)"
    if ! "$VENV/bin/python" -m pip install -q -e ".[all,dev]" > "$VENV/install.log" 2>&1; then
      tail -n 60 "$VENV/install.log" >&2
      echo "pip install failed; the whole log is in $VENV/install.log" >&2
      exit 1
    fi
    echo "$want" > "$stamp"
  fi
}

setup_data() {
  log "offline data in $ONDEVICE_DATA (checksums verified)"
  "$VENV/bin/ondevice" fetch mnist ccexam fashion-mnist wordnet minilm
}

setup() { setup_system; setup_python; setup_data; }

case "${1:-}" in
  setup) setup ;;
  example)
    setup
    log "ondevice run examples/mnist.toml"
    "$VENV/bin/ondevice" run examples/mnist.toml "${@:2}"
    ;;
  test)
    setup
    # One pytest worker per core (pytest-xdist), each test file kept whole in one worker (its module fixtures are
    # built once) and one BLAS thread per worker; ONDEVICE_TEST_WORKERS=1 runs everything in one process.
    workers=${ONDEVICE_TEST_WORKERS:-$(nproc)} par=()
    [ "$workers" -gt 1 ] && par=(-n "$workers" --dist loadfile)
    log "pytest (${workers} worker(s))"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( workers > 1 ? 1 : 2 ))} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
    export ONDEVICE_NO_SKIP=1   # everything is installed and fetched here: a skip would hide a missing piece
    "$VENV/bin/python" -m pytest "${par[@]}" "${@:2}"
    ;;
  *) echo "usage: bash scripts/dev.sh {example|test|setup} [extra args]" >&2; exit 2 ;;
esac
