#!/usr/bin/env bash
# Set up and run the bridge on the shipped config.yaml: MLLP on 127.0.0.1:2575, the SQLite
# store and the .wl folder under ./data. Extra arguments go to `serve` (e.g. --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
exec .venv/bin/hl7-worklist-bridge serve --config config.yaml "$@"
