#!/usr/bin/env bash
# Installs everything dicom_agent needs on a fresh Debian machine, idempotently.
#   scripts/setup.sh          Python environment in .venv (runtime + dev tools)
#   scripts/setup.sh --peers  also the Debian peers the tests talk to (dcmtk, Orthanc, PixelMed, Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed

install_peers() {
  local pkgs=(dcmtk orthanc libpixelmed-java default-jre-headless chromium fonts-wqy-microhei docker-compose)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian starts an Orthanc service on install; tests run their own instances on free ports.
  if command -v service >/dev/null 2>&1; then service orthanc stop >/dev/null 2>&1 || true; fi
}

install_python() {
  local want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then return; fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  # pinned to the versions the suite last passed with: a new numpy once moved sample pixels by 1 LSB
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[cpu,dev]"
  echo "$want" >"$STAMP"
}

[ "${1:-}" = "--peers" ] && install_peers
install_python
