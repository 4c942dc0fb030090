#!/usr/bin/env bash
# The commands behind the tables in benchmarks/README.md ("Reproduction"). About 40 minutes on
# 2 CPU cores; PAPER=1 adds the paper preset (one seed, about 15 minutes more); DESIGN=1 the design decisions.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=.venv/bin/lightning-mmloss
# --resume: a rerun keeps the runs already in each results.csv (an interrupted reproduction continues)
$cli compare --scenario ehh --seeds 5 --output runs/repro/ehh --resume
$cli compare --scenario instance --seeds 5 --output runs/repro/instance --resume
$cli compare --scenario conflict --seeds 5 --output runs/repro/conflict --resume
uci="--data uci-mfeat --data-dir ../shared/data/uci-mfeat --seeds 5 --proxies 10"
$cli compare $uci --output runs/repro/uci_clean --resume
$cli compare $uci --corrupt-fraction 0.5 --output runs/repro/uci_corrupted --resume
$cli compare $uci --corrupt-fraction 0.5 --corruption swap --corrupt-views 2 --fusions late,mm --output runs/repro/uci_swap2 --resume
# a second real multi-view set, clean (scikit-learn's digits in four quadrant views; needs the bench extra)
PYTHONPATH=benchmarks $cli compare --data digits_views.DigitsViewsDataModule --seeds 5 --proxies 10 --output runs/repro/digits --resume
if [ "${PAPER:-0}" = 1 ]; then
  $cli compare --scenario ehh --preset paper --hidden 500,100,20 --seeds 1 --output runs/repro/ehh_paper --resume
fi
if [ "${DESIGN:-0}" = 1 ]; then
  # the "Design decisions" tables of benchmarks/README.md (about 40 minutes on 2 cores)
  dd=".venv/bin/python benchmarks/design_decisions.py"
  $dd --candidates independent,sum,concat,late,ogm_ge,mm,mm_paper,mm_authorsinit,mm_aux0.5,mm_classinit,mm_classinit_aux0.2,mm_classinit_aux0.5,mm_classinit_aux1,mm_classinit_aux0.5_cal,mm_paper_cal,mm_classinit_aux0.5_k5,mm_classinit_aux0.5_g0.2 \
    --scenarios ehh,instance,conflict --seeds 5 --out runs/design/synthetic
  $dd --candidates independent,sum,concat,late,ogm_ge,mm,mm_paper --scenarios uci_clean,uci_corrupted --seeds 5 --out runs/design/uci
  $dd --candidates late,ogm_ge,mm,mm_paper --scenarios uci_swap2,uci_swap3 --seeds 3 --out runs/design/uci_swap
  # Q5 (issue 19): the default against the old one everywhere, larger floors, seeds 5-9 on the clean sets
  $dd --candidates late,independent,mm_le0,mm --scenarios uci_clean,digits,ehh,instance,conflict,uci_corrupted,uci_swap2 --seeds 5 --out runs/design/q5
  $dd --candidates mm_floor1e-3,mm_floor1e-2 --scenarios uci_clean,digits --seeds 5 --out runs/design/q5_floor
  $dd --candidates late,independent,mm --scenarios uci_clean,digits --seeds 5 --first-seed 5 --out runs/design/q5_seeds5to9
  .venv/bin/python benchmarks/log_evidence_floor.py --floors 0,1e-4,1e-3,1e-2
  # Q5, what did not work: more auxiliary weight, less or scheduled fused gradient into the heads, 120 epochs
  $dd --candidates mm_a0.75,mm_a1 --scenarios digits,uci_clean,ehh,instance,conflict,uci_corrupted,uci_swap2 --seeds 5 --out runs/design/q5_aux
  $dd --candidates mm_fg0,mm_fg0.25,mm_fgdecay --scenarios digits,uci_clean,ehh,instance,conflict --seeds 5 --out runs/design/q5_fused_gradient
  # 120 epochs, apart: the tables below are of 60-epoch runs
  $dd --candidates late,independent,mm,mm_fgdecay --scenarios digits,uci_clean --seeds 5 --epochs 120 --out runs/design_epochs120/clean
  $dd --candidates late,independent,mm,mm_fgdecay,mm_le0 --scenarios ehh --seeds 5 --epochs 120 --out runs/design_epochs120/ehh
  # the default with the temperature grid of 0.001-1000 (rows record the fitted temperature)
  $dd --candidates mm --scenarios ehh,instance,conflict,uci_clean,uci_corrupted,uci_swap2,digits --seeds 5 --out runs/design_tgrid
  $dd --candidates mm --scenarios ehh --seeds 5 --epochs 120 --out runs/design_epochs120/tgrid_ehh
  .venv/bin/python benchmarks/temperature_fit.py
  $dd --tables-from runs/design/*/rows.csv
fi
