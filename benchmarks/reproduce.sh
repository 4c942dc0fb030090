#!/usr/bin/env bash
# The commands behind the tables in benchmarks/README.md ("Reproduction"). About 10 minutes on
# 2 CPU cores; PAPER=1 adds the paper preset (one seed, about 15 minutes more).
set -euo pipefail
cd "$(dirname "$0")/.."
cli=.venv/bin/lightning-mmloss
$cli compare --scenario ehh --seeds 5 --output runs/repro/ehh
$cli compare --scenario instance --seeds 3 --output runs/repro/instance
$cli compare --scenario conflict --seeds 3 --output runs/repro/conflict
$cli compare --data uci-mfeat --seeds 3 --proxies 10 --output runs/repro/uci_clean
$cli compare --data uci-mfeat --corrupt-fraction 0.5 --seeds 3 --proxies 10 --output runs/repro/uci_corrupted
if [ "${PAPER:-0}" = 1 ]; then
  $cli compare --scenario ehh --preset paper --hidden 500,100,20 --seeds 1 --output runs/repro/ehh_paper
fi
