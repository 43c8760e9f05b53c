#!/usr/bin/env bash
# A2C against DQN on Breakout at equal wall time (issue 21): `a3c-breakout trainer.mode=a2c` and
# `dqn-breakout`, each trained for MINUTES with the machine to itself (through ../shared/bin/measure where
# it exists: it waits for a quiet machine and prints the CPU model, flags and load), one after the other,
# both on 2 threads in fp32 (the YAMLs' recipes otherwise). A run is stopped by SIGINT, which checkpoints
# it. Then the figure of both training curves against wall minutes, and a greedy evaluation (30 episodes
# at epsilon 0.05) of each run's last checkpoint. Run dirs go to $FDL_RUNS_DIR (runs/).
#
#     bash benchmarks/breakout_wall_time.sh MINUTES [--a2c RUN] [--dqn RUN] [--out PNG]
#
# --a2c RUN / --dqn RUN: use a run trained earlier (the same command, on the same kind of CPU) instead of
# training one; `fdl train --resume RUN` extends one (the figure's minutes leave out the pause).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:?usage: bash benchmarks/breakout_wall_time.sh MINUTES [--a2c RUN] [--dqn RUN] [--out PNG]}"
shift
a2c="" dqn="" out=docs/figures/breakout_wall_time.png
while [ $# -gt 0 ]; do
  case "$1" in
    --a2c) a2c="$2"; shift 2 ;;
    --dqn) dqn="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "breakout_wall_time.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
. benchmarks/sequential.sh  # quiet, newest
# checkpoints every 250k agent steps, all kept: greedy evaluations at equal times afterwards
keep=(trainer.threads=2 trainer.checkpoint_every=250000 trainer.keep_checkpoints=100)

train_for() {  # EXPERIMENT OVERRIDES...: MINUTES of training, then SIGINT
  local rc=0
  quiet timeout -s INT -k 300 "$((minutes * 60))" fdl train "$@" "${keep[@]}" || rc=$?
  # 124: timeout sent the planned SIGINT (fdl checkpointed and stopped); 130: fdl's own exit after it
  [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] || return "$rc"
}
if [ -z "$a2c" ]; then train_for a3c-breakout trainer.mode=a2c; a2c="$(newest a3c-breakout)"; fi
if [ -z "$dqn" ]; then train_for dqn-breakout; dqn="$(newest dqn-breakout)"; fi

fdl plot-returns "$a2c" "$dqn" --x minutes --out "$out" \
  --title "Breakout: A2C against DQN at equal wall time (seed 0, 2 threads)"
for run in "$a2c" "$dqn"; do
  echo "greedy evaluation of $run (last checkpoint, 30 episodes, epsilon 0.05):"
  fdl play "$run" --checkpoint last -n 30 --epsilon 0.05
done
