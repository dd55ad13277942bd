#!/usr/bin/env bash
# `make demo` classifies WordNet 3.0 entries; Debian's wordnet-base package installs them. Install it when missing.
set -euo pipefail
if [ ! -f /usr/share/wordnet/data.noun ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y wordnet-base
fi
