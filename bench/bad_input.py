"""How long each kind of bad input takes to be refused, and the memory it costs: the whole
`runbook-exec check` process, wall seconds and peak RSS, against `check` of a good runbook.

    .venv/bin/python bench/bad_input.py

Each case must exit 2 (tests/test_bad_input.py asserts that); this prints the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
STEP = "name: t\ntargets: all\nsteps:\n  - shell: {body}\n"


def measured(args: list[str]) -> tuple[int, float, int]:
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", str(BIN / "runbook-exec"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RUNBOOK_EXEC_NO_WARM": "1"},
    )
    elapsed = time.perf_counter() - start
    return done.returncode, elapsed, int(done.stderr.strip().splitlines()[-1])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="rbx-bad-"))
    inventory = work / "hosts.ini"
    inventory.write_text("h1\n")
    cases: dict[str, list[str]] = {}
    for name, body in {
        "good runbook": "echo hello",
        "'x' * 10**9": "\"{{ 'x' * 1000000000 }}\"",
        "range(10**8)": '"{{ range(100000000) | list }}"',
        "center(10**9)": "\"{{ 'x' | center(1000000000) }}\"",
    }.items():
        path = work / f"{len(cases)}.yml"
        path.write_text(STEP.format(body=body))
        cases[name] = ["check", str(path), "-i", str(inventory)]
    nul = work / "nul.yml"
    nul.write_bytes(b"name: t\ntargets: all\nsteps:\n  - shell: a\x00b\n")
    cases["NUL byte"] = ["check", str(nul)]
    deep = work / "deep.yml"
    deep.write_text("name: t\ntargets: all\nsteps: " + "[" * 20000 + "]" * 20000 + "\n")
    cases["nesting 20,000 deep"] = ["check", str(deep)]
    cases["/dev/zero"] = ["check", "/dev/zero"]
    fifo = work / "fifo.yml"
    os.mkfifo(fifo)
    cases["a FIFO"] = ["check", str(fifo)]
    print(f"{'case':<22} exit  seconds  peak RSS")
    for name, args in cases.items():
        code, seconds, rss = measured(args)
        print(f"{name:<22} {code:>4}  {seconds:>7.2f}  {rss / 1024:>6.0f} MB")


if __name__ == "__main__":
    main()
