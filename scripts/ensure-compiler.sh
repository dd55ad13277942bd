#!/usr/bin/env bash
# tunelab compiles its CPU kernels (src/tunelab/engine/csrc) with the system's C++ compiler on first use, as
# torch.compile's CPU backend does; install g++ when missing. Without it the engine still runs, on torch's kernels.
set -euo pipefail
if ! command -v "${CXX:-g++}" >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y g++
fi
