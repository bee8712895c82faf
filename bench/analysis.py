"""What an analysis costs a batch beyond its own interval: a real run on --hosts real local
sshd hosts in --batches batches, whose only step is an analysis of --count measurements
--interval apart, asked of a real Prometheus (Debian's package) started here; against the
same run with a `wait:` step of the same length (count - 1) × interval, which is what the
analysis would cost if asking, judging and recording were free.

    .venv/bin/python bench/analysis.py [--hosts 20] [--batches 10] [--count 5] [--interval 1]

Prints each run's wall time, the cost per batch beyond the interval (analysis - wait, per
batch) and per measurement, and the ratio analysis / wait.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runbook_exec.analysis import instant
from runbook_exec.testing.lab import SshLab
from runbook_exec.testing.services import Prometheus

BIN = Path(sys.executable).parent


def run(base: Path, lab: SshLab, book: dict[str, object], name: str) -> float:
    path = base / f"{name}.yml"
    path.write_text(json.dumps(book))
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "runbook-exec"), "run", str(path), *lab.cli_args(), "--db",
         f"sqlite:///{base / 'state.db'}", "--json", "--no-input"],
        capture_output=True, text=True, cwd=base,
    )  # fmt: skip
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: {done.stdout}{done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rbx-bench-analysis-"))
    size = max(1, args.hosts // args.batches)
    strategy = {"batches": [size] * (args.batches - 1) + ["100%"]}
    with SshLab(base / "lab") as lab:
        lab.start(
            args.hosts, groups={"app": [h for h in (f"host{i + 1}" for i in range(args.hosts))]}
        )
        with Prometheus(base / "prometheus", {}) as prometheus:
            query = "sum(vector({{ batch_hosts | length }})) / {{ batch_hosts | length }} - 1"
            analysis = {
                "prometheus": prometheus.url,
                "query": query,
                "success": "result < 0.01",
                "count": args.count,
                "interval": f"{args.interval}s",
            }
            waited = (args.count - 1) * args.interval
            common = {"targets": "app", "strategy": strategy}
            step = [{"name": "Judge", "analysis": analysis}]
            judged = run(base, lab, {"name": "judged", **common, "steps": step}, "judged")
            pause = [{"name": "Pause", "wait": f"{waited}s"}]
            paused = run(base, lab, {"name": "paused", **common, "steps": pause}, "paused")
            asked = []
            for _ in range(50):  # one query's round trip, as a measurement makes it
                started = time.perf_counter()
                instant(prometheus.url, "sum(vector(1)) - 1", time.time(), {}, 5.0)
                asked.append(time.perf_counter() - started)
    extra = (judged - paused) / args.batches
    print(
        f"{args.hosts} hosts, {args.batches} batches, {args.count} measurements "
        f"{args.interval:g}s apart (Prometheus {prometheus.url})"
    )
    print(f"  analysis run  {judged:7.2f} s")
    print(f"  wait run      {paused:7.2f} s   (a wait of {waited:g}s per batch)")
    print(
        f"  beyond the interval: {extra * 1000:.0f} ms a batch, "
        f"{extra / args.count * 1000:.1f} ms a measurement; ratio {judged / paused:.3f}"
    )
    print(
        f"  one query's round trip: median {statistics.median(asked) * 1000:.1f} ms "
        "(inside the interval: measurements keep a fixed cadence from the first)"
    )


if __name__ == "__main__":
    main()
