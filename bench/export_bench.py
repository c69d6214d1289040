"""What the serving hand-off costs a job (issue 23): the same small job in a fresh process, with its serving files
(`spec.serving.export: true`, the default: ONNX graph, Triton repository, InferenceService manifest) and without
(`false`), interleaved, and the ratio without / with.

  .venv/bin/python bench/export_bench.py [--rounds 3]

The job is one Pretrain epoch on the built-in digits, run in the process (no Ray), so that what differs is the
export; its first run in a process pays the ONNX exporter's imports (torch.export, onnxscript), as every `graft
run` and every driver pod does. The machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from statistics import mean

_JOB = r"""
import json, sys, time
t0 = time.perf_counter()
from graft.api.models import TransferJob
from graft_trainer.driver import Driver
from graft_trainer.executors import LocalExecutor

spec = {"model": {"backbone": "smallcnn", "numClasses": 10},
        "data": {"train": "builtin:digits", "imageSize": 8, "shotsPerClass": 2},
        "stages": [{"type": "Pretrain", "data": "builtin:digits", "numClasses": 10, "epochs": 1}],
        "checks": {"learning": {"action": "Warn"}}, "serving": {"export": sys.argv[2] == "true"}}
job = TransferJob.model_validate({"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob",
                                  "metadata": {"name": "bench"}, "spec": spec})
ledger = Driver(job, sys.argv[1], executor=LocalExecutor()).run()
print(json.dumps({"seconds": time.perf_counter() - t0, "onnx": bool((ledger.serving or {}).get("onnx"))}))
"""


def run(export: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="graft-export-bench-") as root:
        done = subprocess.run([sys.executable, "-c", _JOB, root, "true" if export else "false"], capture_output=True,
                              text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["onnx"] is export, out
    return out["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    for n in range(args.rounds):
        for export in ((True, False) if n % 2 == 0 else (False, True)):  # alternate who goes first
            times[export].append(run(export))
    with_, without = mean(times[True]), mean(times[False])
    print(f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds, process wall time (imports, job, export)")
    print(f"  serving.export true  : {with_:6.2f} s  {[round(t, 2) for t in times[True]]}")
    print(f"  serving.export false : {without:6.2f} s  {[round(t, 2) for t in times[False]]}")
    print(f"  false / true         : {without / with_:.2f}  (saved {with_ - without:.2f} s a job)")
    return 0


if __name__ == "__main__":
    start = time.time()
    code = main()
    print(f"({time.time() - start:.0f} s)")
    sys.exit(code)
