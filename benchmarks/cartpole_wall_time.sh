#!/usr/bin/env bash
# A3C, DQN and REINFORCE on CartPole against wall time (issue 21): the three default runs of seed 0, one
# after another, each with the machine to itself (through ../shared/bin/measure where it exists: it waits
# for a quiet machine and prints the CPU model, flags and load), then the figure of their average training
# returns against wall minutes. About an hour on a quiet 2-core CPU. Run dirs go to $FDL_RUNS_DIR (runs/).
#
#     bash benchmarks/cartpole_wall_time.sh [--out docs/figures/cartpole_wall_time.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/figures/cartpole_wall_time.png
if [ "${1:-}" = "--out" ]; then out="$2"; fi
. benchmarks/sequential.sh  # quiet, newest
for experiment in a3c-cartpole dqn-cartpole pg-cartpole; do
  quiet fdl train "$experiment" seed=0
done
fdl plot-returns "$(newest a3c-cartpole)" "$(newest dqn-cartpole)" "$(newest pg-cartpole)" --x minutes \
  --title "CartPole-v1: A3C, DQN and REINFORCE against wall time (seed 0)" --out "$out"
