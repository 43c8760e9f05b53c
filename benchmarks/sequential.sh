# Sourced (from the repository root) by the benchmark scripts that train runs one after another and then
# compare them: benchmarks/cartpole_wall_time.sh, benchmarks/breakout_wall_time.sh.

# quiet CMD...: CMD with the machine to itself, through ../shared/bin/measure where it exists (it waits for
# a quiet machine and prints the CPU model, flags and load), else CMD as it is
quiet() { if [ -x ../shared/bin/measure ]; then ../shared/bin/measure "$@"; else "$@"; fi; }

# newest EXPERIMENT: the latest run directory of EXPERIMENT under $FDL_RUNS_DIR (default runs/)
newest() { ls -d "${FDL_RUNS_DIR:-runs}/$1"/*/ | sort | tail -n 1; }
