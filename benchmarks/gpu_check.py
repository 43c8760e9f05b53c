"""Every experiment for a few steps on a device, with bf16 and compile on and off: one table.

    python benchmarks/gpu_check.py [--device cuda] [--jobs 4] [--timeout 240] [--out FILE]

Each experiment runs its golden short command (tests/golden/<name>.json: a small slice of the real data, a
few steps) with ``trainer.device`` set, in three variants: fp32, bf16 autocast, and bf16 + torch.compile.
A variant the experiment does not declare must be refused with exit 2 (fdl's "no key silently ignored"
rule); one it declares must train, finish and write finite metrics. The table gives, per experiment and
variant, ok / refused / FAILED with the wall time and the last logged training value, and the script exits
non-zero if anything failed. ``benchmarks/gpu_check.sh`` runs it on the lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "golden"))
import compare  # noqa: E402  (tests/golden/compare.py: the golden runs' placeholders)

GOLDEN = REPO / "tests" / "golden"
VARIANTS = {
    "fp32": [],
    "bf16": ["trainer.precision=bf16"],
    "bf16+compile": ["trainer.precision=bf16", "trainer.compile=true"],
}
FEATURE_OF = {"trainer.precision=bf16": "precision", "trainer.compile=true": "compile"}


def golden_overrides(name: str, inputs: Path) -> list[str]:
    """The golden run's overrides, its ``{inputs}`` folder (neural-style's images) made and filled in."""
    record = json.loads((GOLDEN / f"{name}.json").read_text())
    overrides = [o for o in record["overrides"] if not o.startswith(("trainer.device=", "trainer.threads="))]
    if any(compare.INPUTS_PLACEHOLDER in o for o in overrides):
        compare.make_inputs(inputs)
    return compare.command_overrides(overrides, inputs)


def expected_refusal(name: str, variant: list[str]) -> bool:
    from fdlcli import registry

    supports = registry.get(name).task.supports
    return any(FEATURE_OF[o] not in supports for o in variant)


def run_one(name: str, variant_name: str, device: str, timeout: float, env: dict[str, str]) -> dict:
    variant = VARIANTS[variant_name]
    refuse = expected_refusal(name, variant)
    result = {"name": name, "variant": variant_name}
    with tempfile.TemporaryDirectory() as runs:
        overrides = golden_overrides(name, Path(runs) / "inputs")
        command = [sys.executable, "-m", "fdlcli", "train", name, *overrides]
        command += [f"trainer.device={device}", *variant]
        started = time.monotonic()
        try:
            done = subprocess.run(
                command,
                env={**env, "FDL_RUNS_DIR": runs},
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return {**result, "status": "FAILED", "why": f"timeout {timeout:.0f} s"}
        result.update(seconds=time.monotonic() - started)
        result["why"] = (done.stderr.strip().splitlines() or [""])[-1][:100]
        if refuse:
            ok = done.returncode == 2 and "does not support" in done.stderr
            return {**result, "status": "refused" if ok else "FAILED"}
        if done.returncode == 2 and "Traceback" not in done.stderr:  # refused for another reason, in
            return {**result, "status": "refused"}  # one line (skip-gram's Hogwild engine: CPU only)
        if done.returncode != 0:
            return {**result, "status": "FAILED"}
        metrics = [json.loads(line) for path in Path(runs).glob("**/metrics.jsonl") for line in path.open()]
        # None is a value not defined yet (a return average before the first episode ends), NaN is a failure
        values = [m["value"] for m in metrics if m["name"].startswith("train/") and m["value"] is not None]
        finite = all(math.isfinite(v) for v in values)
        result["why"] = f"last train value {values[-1]:.4g}" if values else "no training records"
        return {**result, "status": "ok" if finite and values else "FAILED"}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=4, help="runs at once (they share the device)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per run")
    parser.add_argument("--out", type=Path, help="also write the results as JSON lines")
    parser.add_argument("--print-overrides", metavar="NAME", help="print NAME's golden overrides and exit")
    parser.add_argument("names", nargs="*", help="experiments (default: every golden one)")
    args = parser.parse_args()
    if args.print_overrides:  # gpu_check.sh's eval round trip trains from the same command
        print(" ".join(golden_overrides(args.print_overrides, Path(tempfile.mkdtemp()) / "inputs")))
        return 0
    names = args.names or sorted(p.stem for p in GOLDEN.glob("*.json"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    jobs = [(n, v) for n in names for v in VARIANTS]
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:  # a line per run as it ends: an outer timeout keeps them
        futures = [pool.submit(run_one, *job, args.device, args.timeout, env) for job in jobs]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            seconds = f"{result['seconds']:.0f}s" if "seconds" in result else "-"
            line = f"{result['status']:<8} {result['name']} {result['variant']} {seconds}"
            print(f"{line} {result.get('why', '')}", flush=True)
    width = max(len(n) for n in names)
    print(f"{'experiment':<{width}}  " + "  ".join(f"{v:<22}" for v in VARIANTS))
    for name in names:
        cells = []
        for result in sorted(
            (r for r in results if r["name"] == name), key=lambda r: list(VARIANTS).index(r["variant"])
        ):
            seconds = f" {result['seconds']:.0f}s" if "seconds" in result else ""
            cells.append(f"{result['status'] + seconds:<22}")
        print(f"{name:<{width}}  " + "  ".join(cells))
    failed = [r for r in results if r["status"] == "FAILED"]
    for result in failed:
        print(f"FAILED {result['name']} {result['variant']}: {result.get('why', '')}")
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in results))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
