#!/usr/bin/env bash
# Run HERE (a machine with the package registries) before benchmarks/gpu_check.sh on the lent GPU machine,
# which reaches no network: it fills .gpu/ (git-ignored) with
#   .gpu/whl   wheels (CPython 3.12, manylinux x86-64) of what fdl needs and that machine's image lacks
#              (its image has torch, numpy, pandas, pyarrow, rich, click, matplotlib, scikit-learn,
#              safetensors, tensorboard, sacrebleu, numba, imageio, pytest, pytest-xdist, ...: see
#              the device tool's KINDS.md), and
#   .gpu/data  the data mirror, with the two large datasets cut to small slices (CIFAR-10 and IMDB), so that
#              the working tree that travels stays under the tool's 64 MiB.
# Then: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${FDL_DATA_DIR:-$(cd .. && pwd)/shared/data}"
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .gpu/whl \
  "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4" hydra-joblib-launcher==1.2.0 "datasets>=3.0" dill \
  multiprocess "gymnasium>=1.0,<2" farama-notifications "ale-py>=0.10" prompt_toolkit wcwidth pexpect \
  ptyprocess MinAtar==1.0.15 sacremoses
# antlr4-python3-runtime 4.9.3 (omegaconf's parser) is published as a source archive only: build its wheel
python3 -m pip wheel -q --no-deps -w .gpu/whl antlr4-python3-runtime==4.9.3
python3 - "$DATA" <<'PY'
import shutil, sys
from pathlib import Path
import pyarrow.parquet as pq

source, target = Path(sys.argv[1]), Path(".gpu/data")
cut = {"cifar10": 8000, "imdb": 4000}  # rows per split of the large ones (CIFAR-10: 5,000 go to validation)
for folder in sorted(p for p in source.iterdir() if p.is_dir()):
    if folder.name not in cut:
        shutil.copytree(folder, target / folder.name)
        continue
    (target / folder.name).mkdir()
    for split in folder.glob("*.parquet"):
        table = pq.read_table(split)
        pq.write_table(table.slice(0, cut[folder.name]), target / folder.name / split.name)
PY
du -sh .gpu/whl .gpu/data
