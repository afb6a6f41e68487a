#!/usr/bin/env bash
# Installs what tokenmix needs on Debian 12 (only the packages that are missing). Run as root or with sudo.
# `setup.sh clang` adds clang 14 with its OpenMP and sanitizer/libFuzzer runtimes (make clang-test, make fuzz);
# `setup.sh python` adds Python's headers and venv and Debian's numpy / torch (make venv, make test).
set -euo pipefail
packages=(g++ cmake make libopenblas-openmp-dev libdnnl-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
          libbenchmark-dev)
if [ "${1:-}" = clang ]; then packages+=(clang libomp-14-dev libclang-rt-14-dev); fi
if [ "${1:-}" = python ]; then packages+=(python3-dev python3-venv python3-numpy python3-torch python3-torchaudio); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "tokenmix setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
