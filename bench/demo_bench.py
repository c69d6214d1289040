"""The README's demo (`examples/digits-lpft.yaml`) with `graft run`, this checkout against a baseline checkout, in the
same invocation, interleaved (issue 23): each stage's time, its breakdown (`graft status`'s timing, where the code
records one), the sum of stage times, the exported model's test accuracy, and the ratio new / baseline.

  .venv/bin/python bench/demo_bench.py                     # baseline: the commit before issue 23's work (ca262f6)
  .venv/bin/python bench/demo_bench.py --rounds 3 --base main
  .venv/bin/python bench/trainer_bench.py demo --rounds 3  # the same

The baseline is `git archive <base>` unpacked in a temporary folder and run with it first on PYTHONPATH (the
checkout's `graft/__init__.py` maps `trainer/` to `graft_trainer` there too); both use this interpreter's packages.
The machine's load average is printed with the figures: on a shared machine compare only figures of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
GRAFT = str(Path(sys.executable).with_name("graft"))
DEMO = REPO / "examples" / "digits-lpft.yaml"
#: The commit this work started from (2026-12-07): the baseline unless --base says otherwise.
BASE = "ca262f6"
#: graft.ledger.TIMING_PARTS (the ledger's JSON has its keys sorted): spelled out, so a baseline without it runs too.
PARTS = ("ray_init", "startup", "data", "compute", "checkpoint", "teardown", "driver")


def unpack(ref: str, into: Path) -> Path:
    """The tree of `ref` (a commit, branch or tag of this repository) in `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_demo(code: Path, store: Path, timeout: float) -> dict:
    """One `graft run` of the demo with `code` first on PYTHONPATH: per-stage seconds and timing, wall time, test
    accuracy of the exported model."""
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    done = subprocess.run([GRAFT, "run", str(DEMO), "--storage", str(store)], cwd=store.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"graft run with {code} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    ledger = json.loads((store / "digits-lpft" / "ledger.json").read_text())
    model = json.loads((store / "digits-lpft" / "model" / "model.json").read_text())
    stages = {s["type"]: {"seconds": s["seconds"], "timing": s.get("timing") or {}} for s in ledger["stages"]}
    return {"wall": wall, "stages": stages, "stage_sum": sum(s["seconds"] for s in stages.values()),
            "test_accuracy": model["metrics"].get("test_accuracy"), "exported": ledger.get("export", {}).get("stage"),
            "load": os.getloadavg()[0]}


def line(label: str, run: dict) -> str:
    parts = "  ".join(f"{name} {s['seconds']:.1f}s" for name, s in run["stages"].items())
    return (f"{label:9} sum {run['stage_sum']:5.1f}s  wall {run['wall']:5.1f}s  test_accuracy "
            f"{run['test_accuracy']:.4f} ({run['exported']})  load {run['load']:.1f}  | {parts}")


def breakdown(run: dict) -> list[str]:
    """`graft status`'s timing lines, one per stage (none for a baseline that records none)."""
    out = []
    for name, s in run["stages"].items():
        if s["timing"]:
            parts = ", ".join(f"{k} {s['timing'][k]:.1f}s" for k in PARTS if s["timing"].get(k, 0.0) >= 0.05)
            out.append(f"    {name}: {parts}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help=f"git ref of the baseline (default {BASE})")
    parser.add_argument("--rounds", type=int, default=1, help="baseline and new runs each, interleaved")
    parser.add_argument("--no-base", action="store_true", help="this checkout only (no ratio)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per graft run")
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}; cpus: {os.cpu_count()}", flush=True)
    runs: dict[str, list[dict]] = {"baseline": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="graft-demo-bench-") as tmp:
        codes = {"new": REPO}
        if not args.no_base:
            codes["baseline"] = unpack(args.base, Path(tmp) / "base-code")
        for i in range(args.rounds):
            # Alternate who goes first, so that a load change in the machine does not favour one side.
            order = list(codes) if i % 2 == 0 else list(reversed(codes))
            for label in order:
                store = Path(tmp) / f"{label}-{i}" / "runs"
                store.parent.mkdir()
                run = run_demo(codes[label], store, args.timeout)
                runs[label].append(run)
                print(line(label, run), flush=True)
                print("\n".join(breakdown(run)), flush=True)
    summary = {k: {"stage_sum": mean(r["stage_sum"] for r in v), "test_accuracy": [r["test_accuracy"] for r in v]}
               for k, v in runs.items() if v}
    if "baseline" in summary:
        summary["ratio_new_over_baseline"] = summary["new"]["stage_sum"] / summary["baseline"]["stage_sum"]
    print(json.dumps(summary, indent=2))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
