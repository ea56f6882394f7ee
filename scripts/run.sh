#!/usr/bin/env bash
# Set up and run the whole pipeline on this machine: local Kafka, worker, API with the
# embedded ClickHouse engine (chDB, data in var/chdb), and a demo fleet. Ctrl-C stops it all.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec .venv/bin/agentledger up "$@"
