"""Runs every CPU benchmark, one after the other, each in its own process, and prints the total wall time.

    python bench/run_all.py [--smoke] [--only memory,latency,train_step,train_step_1thread,train_step_sizes,
                                               data_throughput]
                            [--results DIR]

Each script prints its tables and writes ``<results>/<script>.json`` (default ``bench/results/``); this writes
``run_all.json`` next to them with every script's wall time and exit status. Exit status 1 if any script failed.
``--smoke`` passes ``--smoke`` to every script (tiny sizes; what tests/e2e/test_bench.py checks).
The device script (``bench/device_step.py``) is not part of this: it is meant for a GPU/TPU (see its docstring).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# name -> (script, extra arguments of the full run); train_step runs three times: with each framework's default
# threads (both use every core), on one core each (the script pins the process to one CPU), and the size sweep on
# one core — see the README
RUNS = {"memory": ("memory", []), "latency": ("latency", []), "train_step": ("train_step", []),
        "train_step_1thread": ("train_step", ["--threads", "1"]),
        "train_step_sizes": ("train_step", ["--sweep", "--threads", "1"]),
        "data_throughput": ("data_throughput", ["--seconds", "10"])}  # 10 s of the pipeline gives a stable rate
SCRIPTS = tuple(RUNS)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", default=",".join(SCRIPTS))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    a = ap.parse_args(argv)
    names = [n for n in a.only.split(",") if n]
    bad = [n for n in names if n not in SCRIPTS]
    if bad:
        ap.error(f"unknown scripts {bad} (known: {', '.join(SCRIPTS)})")
    os.makedirs(a.results, exist_ok=True)
    summary, t_all = [], time.perf_counter()
    for name in names:
        script, extra = RUNS[name]
        cmd = [sys.executable, os.path.join(HERE, f"{script}.py"), "--out", os.path.join(a.results, f"{name}.json")]
        cmd += (["--smoke"] + (extra if script == "train_step" else [])) if a.smoke else extra
        print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        dt = time.perf_counter() - t0
        summary.append({"script": name, "wall_s": dt, "rc": rc})
        print(f"===== {name}: {dt:.1f} s, exit {rc}", flush=True)
    total = time.perf_counter() - t_all
    print("\n| script | wall s | exit |\n|---|---|---|")
    for s in summary:
        print(f"| {s['script']} | {s['wall_s']:.1f} | {s['rc']} |")
    print(f"| **total** | **{total:.1f}** ({total / 60:.1f} min) | |")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    with open(os.path.join(a.results, "run_all.json"), "w") as f:
        json.dump({"scripts": summary, "total_s": total, "smoke": a.smoke, "cpu_count": os.cpu_count(),
                   "loadavg_at_end": load}, f, indent=1)
    return 1 if any(s["rc"] for s in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
