"""Golden runs: what a short run of each experiment records, and how a new run is compared with it.

One module for both users, so the recorder (tests/golden/record.py) and the test (tests/test_golden.py)
can never disagree on what is captured or on what counts as "the same":

* every ``metrics.jsonl`` record and ``summary.json`` without wall-clock/speed values (they differ
  between any two runs);
* the latest step checkpoint's tensors as a sha256 (exact, same CPU) plus per-tensor float64 sums and
  sums of squares (approximate, for another CPU, whose kernels round differently);
* ``checkpoints/best.json`` (which checkpoint won, at which step, by which value);
* the CPU signature the file was recorded on, which picks exact or approximate comparison.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parent
# strings in a run's outputs that name this run's own folders: stored as placeholders
RUN_PLACEHOLDER, INPUTS_PLACEHOLDER = "{run}", "{inputs}"
# wall-clock and throughput values: keys (summary) or metric names (metrics.jsonl) matching this
TIMING = re.compile(r"seconds|_per_s|_cpu_s|(^|/)time$|wall|timestamp")
EXACT_REL, OTHER_CPU_REL = 1e-6, 1e-3
MAX_REPORTED = 15


def regenerate_hint(name: str) -> str:
    return (
        "if the change is intended, regenerate this golden file on purpose: "
        f"PYTHONPATH=$PWD FDL_DATA_DIR=/work/shared/data python tests/golden/record.py --update {name}"
    )


def golden_path(name: str, signature: dict[str, Any] | None = None) -> Path:
    """``name``'s golden file: the one recorded on ``signature``'s kind of CPU if there is one (a
    ``cpu-*`` folder: AVX2 and AVX-512 kernels round differently, and a few training steps carry that into
    the metrics of a small evaluation slice), else the first recorded, tests/golden/<name>.json."""
    if signature is not None:
        variant = GOLDEN_DIR / cpu_folder(signature) / f"{name}.json"
        if variant.is_file():
            return variant
    return GOLDEN_DIR / f"{name}.json"


def cpu_folder(signature: dict[str, Any]) -> str:
    return "cpu-avx512f" if signature["avx512f"] else "cpu-no-avx512f"


def golden_names() -> list[str]:
    return sorted(p.stem for p in GOLDEN_DIR.glob("*.json"))


# ---- the command ------------------------------------------------------------------------------------


def make_inputs(directory: Path) -> None:
    """neural-style's content and style images: seeded noise, saved losslessly, the same on every machine."""
    import torch
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for name, shape in (("content", (20, 24, 3)), ("style", (30, 30, 3))):
        pixels = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(directory / f"{name}.png")


def command_overrides(overrides: list[str], inputs: Path) -> list[str]:
    """A golden file's overrides with the inputs folder of this run filled in."""
    return [o.replace(INPUTS_PLACEHOLDER, str(inputs)) for o in overrides]


# ---- capturing a run ----------------------------------------------------------------------------------


def cpu_signature() -> dict[str, Any]:
    """What decides which CPU kernels torch runs: a run is bit-exact only between equal signatures."""
    import torch

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return {
        "model": fields.get("Model name", "").strip(),
        "avx512f": "avx512f" in fields.get("Flags", "").split(),
        "torch": torch.__version__,
    }


def weights_digest(path: Path) -> dict[str, Any]:
    """sha256 over (name, dtype, shape, bytes) in name order, and float64 sum / sum of squares per tensor."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    digest, sums = hashlib.sha256(), {}
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        values = tensor.double()
        sums[name] = {"sum": values.sum().item(), "sum_sq": (values * values).sum().item()}
    return {"sha256": digest.hexdigest(), "tensors": sums}


def _without_timing(value: Any, replacements: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v, replacements) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [_without_timing(v, replacements) for v in value]
    if isinstance(value, str):
        for path, placeholder in replacements.items():
            value = value.replace(path, placeholder)
    return value


def capture(run: Path, inputs: Path) -> dict[str, Any]:
    """The golden values of a finished run directory (everything but the command and the CPU)."""
    replacements = {str(run): RUN_PLACEHOLDER, str(inputs): INPUTS_PLACEHOLDER}
    metrics = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if not TIMING.search(str(record.get("name", ""))):
            metrics.append(_without_timing(record, replacements))
    summary = _without_timing(json.loads((run / "summary.json").read_text()), replacements)
    checkpoints = run / "checkpoints"
    latest = json.loads((checkpoints / "latest.json").read_text())
    best_file = checkpoints / "best.json"
    return {
        "metrics": metrics,
        "summary": summary,
        "latest": latest,
        "best": json.loads(best_file.read_text()) if best_file.exists() else None,
        "weights": weights_digest(checkpoints / latest["name"] / "model.safetensors"),
    }


# ---- comparing ------------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _diff(expected: Any, got: Any, where: str, rel: float, out: list[str]) -> None:
    """Append 'where: expected X, got Y' for each difference (NaN == NaN == None; floats within rel)."""
    if _missing(expected) or _missing(got):
        if not (_missing(expected) and _missing(got)):
            out.append(f"{where}: expected {expected!r}, got {got!r}")
    elif _number(expected) and _number(got):
        if not math.isclose(expected, got, rel_tol=rel, abs_tol=1e-12):
            out.append(f"{where}: expected {expected!r}, got {got!r}")
    elif isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(expected.keys() | got.keys()):
            if key not in got:
                out.append(f"{where}.{key}: expected {expected[key]!r}, got no such key")
            elif key not in expected:
                out.append(f"{where}.{key}: not in the golden file, got {got[key]!r}")
            else:
                _diff(expected[key], got[key], f"{where}.{key}", rel, out)
    elif isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            out.append(f"{where}: expected {len(expected)} entries, got {len(got)}")
        for index, (e, g) in enumerate(zip(expected, got, strict=False)):
            _diff(e, g, f"{where}[{index}]", rel, out)
    elif expected != got:
        out.append(f"{where}: expected {expected!r}, got {got!r}")


def _metric_label(record: dict[str, Any]) -> str:
    return f"name={record.get('name')} step={record.get('step')}"


def differences(golden: dict[str, Any], got: dict[str, Any], signature: dict[str, Any]) -> list[str]:
    """Every way `got` (a capture()) differs from a golden file; empty when they agree."""
    same_cpu = golden["cpu"] == signature
    rel = EXACT_REL if same_cpu else OTHER_CPU_REL
    out: list[str] = []
    expected_metrics, got_metrics = golden["metrics"], got["metrics"]
    if len(expected_metrics) != len(got_metrics):
        out.append(f"metrics.jsonl: expected {len(expected_metrics)} records, got {len(got_metrics)}")
    for index, (e, g) in enumerate(zip(expected_metrics, got_metrics, strict=False)):
        _diff(e, g, f"metrics.jsonl record {index} ({_metric_label(e)})", rel, out)
    _diff(golden["summary"], got["summary"], "summary.json", rel, out)
    _diff(golden["latest"], got["latest"], "checkpoints/latest.json", rel, out)
    _diff(golden["best"], got["best"], "checkpoints/best.json", rel, out)
    if same_cpu:
        if golden["weights"]["sha256"] != got["weights"]["sha256"]:
            out.append(
                f"weights sha256 of {golden['latest']['name']}: expected {golden['weights']['sha256']}, "
                f"got {got['weights']['sha256']}"
            )
    else:
        _diff_weight_sums(golden["weights"]["tensors"], got["weights"]["tensors"], out)
    return out


def _diff_weight_sums(expected: dict[str, Any], got: dict[str, Any], out: list[str]) -> None:
    """Per tensor, the sum of squares within OTHER_CPU_REL, and the sum within OTHER_CPU_REL of the
    tensor's L2 norm: a sum that cancels to ~0 (a bias whose gradients balance) has no relative precision."""
    if expected.keys() != got.keys():
        out.append(f"weights: expected tensors {sorted(expected)}, got {sorted(got)}")
        return
    for name in sorted(expected):
        e, g = expected[name], got[name]
        scale = math.sqrt(max(e["sum_sq"], 0.0))
        if not math.isclose(e["sum_sq"], g["sum_sq"], rel_tol=OTHER_CPU_REL, abs_tol=1e-12):
            out.append(f"weights.{name}.sum_sq: expected {e['sum_sq']!r}, got {g['sum_sq']!r}")
        if abs(e["sum"] - g["sum"]) > OTHER_CPU_REL * max(scale, abs(e["sum"])) + 1e-12:
            out.append(f"weights.{name}.sum: expected {e['sum']!r}, got {g['sum']!r} (norm {scale:.3g})")


def report(name: str, golden: dict[str, Any], found: list[str], signature: dict[str, Any]) -> str:
    """A failure message: the experiment, the first differences, the CPUs, how to regenerate."""
    shown = found[:MAX_REPORTED]
    more = [f"... and {len(found) - len(shown)} more"] if len(found) > len(shown) else []
    cpu = (
        "same CPU signature as recorded: exact comparison"
        if golden["cpu"] == signature
        else f"recorded on {golden['cpu']}, running on {signature}: approximate comparison (rel 1e-3)"
    )
    return "\n".join(
        [
            f"golden run of {name} differs ({len(found)} differences; {cpu}):",
            *shown,
            *more,
            regenerate_hint(name),
        ]
    )
