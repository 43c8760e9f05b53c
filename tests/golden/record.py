"""Record (--update) or check the golden short run of each experiment.

    PYTHONPATH=$PWD FDL_DATA_DIR=/work/shared/data python tests/golden/record.py [--update] [NAMES...]

Each experiment runs one fixed, short, seeded command on one CPU thread on small slices of the real data
(docs/DEVELOPING.md, Tests). Without --update the runs are only compared with tests/golden/<name>.json
and the differences printed (exit 1 on any); with --update the files are (re)written.
tests/test_golden.py reruns the same commands through pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, so `golden` imports as a package

from fdlcli.runs import atomic_write_text
from golden import compare

REPO = compare.GOLDEN_DIR.parent.parent
COMMON = ["seed=0", "trainer.device=cpu", "trainer.threads=1"]
# tensorboard histograms change no recorded value and cost CPU at every log record
MNIST = [
    "data.train_limit=200", "data.eval_limit=200", "trainer.epochs=2", "trainer.log_every=1",
    "trainer.histograms=false",
]  # fmt: skip
AUTOENCODER = [*MNIST, "model.hidden=[64,32]"]
CIFAR = [
    "data.train_limit=256", "data.batch_size=64", "data.eval_limit=200", "trainer.epochs=2",
    "trainer.log_every=2", "trainer.histograms=false",
]  # fmt: skip
# the NTM paper's copy task, shortened: lengths 1-6, tested at 10 and 12
COPY_NTM = [
    "trainer.steps=8", "trainer.eval_every=4", "trainer.log_every=2", "data.length=6", "data.eval_size=12",
    "data.batch_size=4", "data.test_lengths=[10,12]", "data.length_eval_size=4",
]  # fmt: skip
WORD2VEC = ["data.train_limit=20000", "trainer.epochs=2", "trainer.tsne=false", "trainer.log_every=5"]
I = compare.INPUTS_PLACEHOLDER  # noqa: E741

# Per experiment: 2 epochs / a few steps / a few episodes with several log records, at least two
# validations (so a best checkpoint is chosen) and a checkpoint; ~10 s of CPU each at most.
COMMANDS: dict[str, list[str]] = {
    "logreg-mnist": MNIST,
    "mlp-mnist": MNIST,
    "cnn-mnist": MNIST,
    "cnn-cifar10": CIFAR,
    "cnn-cifar10-bn": CIFAR,
    # 1.5 epochs (a partial last pass), the whitening bias frozen after the first, a lookahead update at
    # step 5 and the final one at step 6; narrow conv groups keep it to a few seconds
    "cnn-cifar10-fast": [
        "data.train_limit=256", "data.batch_size=64", "data.eval_limit=200", "trainer.epochs=1.5",
        "trainer.whiten_bias_epochs=1", "model.widths=[16,32,32]", "model.whiten_images=256",
        "trainer.log_every=2",
    ],
    "neural-style": [
        f"content={I}/content.png", f"style={I}/style.png", "weights=random", "model.size=24",
        "model.iterations=8", "model.snapshot_every=4", "trainer.log_every=1",
    ],
    "autoencoder-mnist": [*AUTOENCODER, "model.code_size=2"],
    "denoising-autoencoder-mnist": AUTOENCODER,
    "sparse-autoencoder-mnist": AUTOENCODER,
    "skipgram": [*WORD2VEC, "data.batch_size=256"],
    "skipgram-word2vec": [*WORD2VEC, "trainer.chunk_words=3000"],
    "pos-tagger": [
        "model.hidden=[64,32]", "model.dim=50", "data.train_limit=1000", "data.eval_limit=300",
        "trainer.epochs=2", "trainer.log_every=3",
    ],
    "sentiment-lstm": [
        "data.val_size=100", "data.train_limit=200", "data.eval_limit=100", "data.vocab_size=3000",
        "data.max_len=120", "model.embed=16", "model.hidden=16", "trainer.epochs=2", "trainer.log_every=2",
    ],
    "translate-en-fr": [
        "data.train_limit=200", "data.eval_limit=16", "data.source_vocab=400", "data.target_vocab=400",
        "data.batch_size=32", "model.embedding=24", "model.hidden=32", "model.attention=24",
        "trainer.epochs=2", "trainer.beam=3", "optim.lr=0.01", "trainer.max_output=12", "trainer.log_every=2",
    ],
    "dnc-babi": [
        "data.tasks=[1,20]", "data.train_limit=64", "data.eval_limit=8", "data.val_size=8",
        "data.batch_size=4", "model.hidden=16", "model.memory_slots=8", "model.word_size=8",
        "model.read_heads=2", "trainer.steps=8", "trainer.eval_every=4", "trainer.log_every=2",
    ],
    "dnc-copy": [
        "trainer.steps=8", "trainer.eval_every=4", "trainer.log_every=2", "data.eval_size=20",
        "data.batch_size=4", "model.hidden=16",
    ],
    "ntm-copy": [*COPY_NTM, "model.hidden=16", "model.memory_slots=16", "model.word_size=8"],
    "lstm-copy": [*COPY_NTM, "model.hidden=16", "model.layers=2"],
    "dqn-cartpole": [
        "trainer.total_steps=600", "trainer.learning_starts=200", "trainer.eval_every=300",
        "trainer.eval_episodes=2", "trainer.log_every=20",
    ],
    "drqn-cartpole": [
        "trainer.total_steps=320", "trainer.learning_starts=60", "trainer.eval_every=160",
        "trainer.eval_episodes=2", "trainer.log_every=10",
    ],
    "dqn-breakout": [
        "trainer.total_steps=160", "trainer.learning_starts=64", "trainer.buffer_size=400",
        "trainer.num_envs=2", "trainer.eval_every=80", "trainer.eval_episodes=1", "trainer.eval_epsilon=1.0",
        "trainer.max_episode_steps=100", "trainer.log_every=4",
    ],
    # A3C's interleaving of asynchronous workers is not repeatable: its golden runs are its A2C mode.
    # The YAML's entropy bonus is 0 since session 29; the golden run keeps the term (recorded with 0.01)
    "a3c-cartpole": [
        "trainer.mode=a2c", "trainer.entropy_coef=0.01", "trainer.num_envs=4", "trainer.total_steps=800",
        "trainer.eval_every=400", "trainer.eval_episodes=2", "trainer.log_every=5",
    ],
    "a3c-breakout": [
        "trainer.mode=a2c", "trainer.num_envs=2", "trainer.total_steps=80", "trainer.eval_every=40",
        "trainer.eval_episodes=1", "trainer.eval_epsilon=1.0", "trainer.max_episode_steps=100",
        "trainer.log_every=2",
    ],
    "a3c-minatar": [
        "trainer.num_envs=2", "trainer.total_steps=200", "trainer.eval_every=100", "trainer.eval_episodes=1",
        "trainer.max_episode_steps=100", "trainer.log_every=5", "model.hidden=[32]",
    ],
    # the replay buffer (20 rows of 2 environments) fills at the 4th update: the auxiliary losses learn
    "unreal-minatar": [
        "trainer.num_envs=2", "trainer.total_steps=200", "trainer.eval_every=100", "trainer.eval_episodes=1",
        "trainer.max_episode_steps=100", "trainer.log_every=5", "trainer.buffer_size=40",
        "trainer.replay_length=5", "trainer.replay_batch=2", "model.hidden=[32]", "model.lstm=32",
    ],
    "pg-cartpole": [
        "trainer.episodes=48", "trainer.eval_every=16", "trainer.eval_episodes=2", "explore=anneal-0.5",
        "trainer.explore.anneal_episodes=48",
    ],
}  # fmt: skip


def run_once(name: str, overrides: list[str], workdir: Path) -> Path:
    """Train `name` with the real command line in a fresh runs folder; the run directory."""
    inputs = workdir / "inputs"
    compare.make_inputs(inputs)
    env = {
        **os.environ,
        "FDL_RUNS_DIR": str(workdir / "runs"),
        "HF_HOME": str(workdir / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "fdlcli",
        "train",
        name,
        *compare.command_overrides(overrides, inputs),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"{name}: `fdl train` failed ({result.returncode}):\n{result.stderr[-3000:]}")
    (run,) = [p for p in (workdir / "runs" / name).iterdir() if p.is_dir()]
    return run


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="write the golden files instead of comparing")
    parser.add_argument("names", nargs="*", help=f"experiments (default: all {len(COMMANDS)})")
    args = parser.parse_args()
    if not os.environ.get("FDL_DATA_DIR"):
        parser.error("set FDL_DATA_DIR to the data mirror (e.g. /work/shared/data)")
    unknown = sorted(set(args.names) - COMMANDS.keys())
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(COMMANDS)}")
    signature, failed = compare.cpu_signature(), 0
    for name in args.names or list(COMMANDS):
        overrides = [*COMMON, *COMMANDS[name]]
        started, cpu_before = time.perf_counter(), _children_cpu_seconds()
        with tempfile.TemporaryDirectory(prefix=f"golden-{name}-") as tmp:
            workdir = Path(tmp)
            got = compare.capture(run_once(name, overrides, workdir), workdir / "inputs")
        took = f"{time.perf_counter() - started:.1f} s wall, {_children_cpu_seconds() - cpu_before:.1f} s CPU"
        path = compare.golden_path(name, signature)
        if args.update:
            primary = compare.golden_path(name)
            if (
                primary.is_file()
                and json.loads(primary.read_text())["cpu"]["avx512f"] != signature["avx512f"]
            ):
                # another kind of CPU than the first recording's: its own file (cpu-*/), compared exactly
                # on this kind; re-record on every kind that has one when the numbers are meant to change
                path = compare.GOLDEN_DIR / compare.cpu_folder(signature) / f"{name}.json"
                path.parent.mkdir(exist_ok=True)
            golden = {"experiment": name, "overrides": overrides, "cpu": signature, **got}
            atomic_write_text(path, json.dumps(golden, indent=1) + "\n")
            print(f"{name}: recorded {path.relative_to(REPO)} ({took})")
            continue
        if not path.exists():
            print(f"{name}: no golden file {path.relative_to(REPO)} (record it with --update)")
            failed += 1
            continue
        golden = json.loads(path.read_text())
        if golden["overrides"] != overrides:
            print(f"{name}: the golden file was recorded with other overrides: {golden['overrides']}")
        found = compare.differences(golden, got, signature)
        failed += bool(found)
        print(compare.report(name, golden, found, signature) if found else f"{name}: same ({took})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
