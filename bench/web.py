"""What the web view costs its users: in Debian's chromium (driven by Playwright), the time
to first paint of a run page of --hosts real local sshd hosts × --steps steps, and of the
page of a --lines-line output; and the JSON API's runs list, requests a second. In the same
run, `runbook-exec show RUN` on the same store, for scale.

    .venv/bin/python bench/web.py [--hosts 1000] [--steps 10] [--lines 300000] [--repeat 5]

The runs are real (`runbook-exec run` on the lab). The server is `serve`'s app under
uvicorn in this process; the browser signs in once, then opens each page --repeat times
(a fresh page each time, so nothing is cached in it). Rendered is the browser's own
`domContentLoadedEventEnd` (the page is parsed and can paint; headless chromium records no
paint timings); loaded is from asking for the page to its load event, as this process
saw it. Best and median are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import CHROMIUM_ARGS
from runbook_exec.testing.lab import SshLab

BIN = Path(sys.executable).parent
PASSWORD = "bench-password-1"


def cli(*args: str, db: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(BIN / "runbook-exec"), *args, "--db", db],
        input=stdin, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


def make_runs(hosts: int, steps: int, lines: int, work: Path, db: str) -> tuple[str, str]:
    """A run of `steps` steps on `hosts` hosts, and one that prints `lines` lines."""
    with SshLab() as lab:
        started = time.perf_counter()
        lab.start(hosts)
        print(f"  {hosts} sshd hosts started in {time.perf_counter() - started:.1f} s")
        wide = work / "wide.yml"
        wide.write_text(
            "name: bench-web\ntargets: lab\nsteps:\n"
            + "".join(
                f"  - name: Step {n}\n    shell: echo step {n} on {{{{ inventory_hostname }}}}\n"
                for n in range(1, steps + 1)
            )
        )
        big = work / "big.yml"
        big.write_text(f"name: bench-output\ntargets: lab\nsteps:\n  - shell: seq 1 {lines}\n")
        forks = str(min(hosts, 500))
        started = time.perf_counter()
        wide_id = json.loads(
            cli("run", str(wide), *lab.cli_args(), "--forks", forks, "--json", db=db)
        )["run_id"]
        print(f"  {hosts} × {steps} run in {time.perf_counter() - started:.1f} s")
        big_id = json.loads(
            cli("run", str(big), *lab.cli_args(), "-l", lab.hosts[0].name, "--json",
                "--output-limit", str(lines * 12), db=db)
        )["run_id"]  # fmt: skip
    return wide_id, big_id


def serve(db: str) -> tuple[str, object]:
    import uvicorn

    from runbook_exec.web import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(db, os.urandom(32)), host="127.0.0.1", port=port,
                       log_level="error")
    )  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def paints(url: str, pages: dict[str, str], repeat: int) -> dict[str, list[tuple[float, float]]]:
    from playwright.sync_api import sync_playwright

    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in pages}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("RBX_CHROMIUM", "/usr/bin/chromium"),
            args=CHROMIUM_ARGS,
        )
        context = browser.new_context()
        login = context.new_page()
        login.goto(url + "/login")
        login.fill("input[name=user]", "bench")
        login.fill("input[name=password]", PASSWORD)
        login.click("button[type=submit]")
        login.wait_for_url("**/runs")
        for _ in range(repeat):
            for name, path in pages.items():
                page = context.new_page()
                started = time.perf_counter()
                page.goto(url + path, wait_until="load")
                wall = time.perf_counter() - started
                parsed = page.evaluate(
                    "() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
                )
                timings[name].append((parsed / 1000, wall))
                page.close()
        browser.close()
    return timings


def api_rate(url: str, token: str, seconds: float = 3.0, threads: int = 8) -> float:
    done = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        while time.perf_counter() < stop:
            request = urllib.request.Request(url + "/api/v1/runs?per_page=50")
            request.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
            with lock:
                done[0] += 1

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return done[0] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rbx-bench-web-"))
    db = f"sqlite:///{work}/state.db"
    wide, big = make_runs(options.hosts, options.steps, options.lines, work, db)
    cli("users", "add", "bench", "--password-stdin", db=db, stdin=PASSWORD)
    token = cli("tokens", "create", "bench", db=db).strip()
    shows = []
    for _ in range(options.repeat):
        started = time.perf_counter()
        cli("show", wide, db=db)
        shows.append(time.perf_counter() - started)
    url, _server = serve(db)
    timings = paints(
        url,
        {
            f"run page, {options.hosts} hosts × {options.steps} steps": f"/runs/{wide}",
            f"output page, {options.lines} lines": (
                f"/runs/{big}/output?section=steps&index=0&host=host1"
            ),
            f"output page, {options.lines} lines, last page": (
                f"/runs/{big}/output?section=steps&index=0&host=host1"
                f"&start={(options.lines - 1) // 500 * 500}"
            ),
        },
        options.repeat,
    )
    print(f"\nbest / median of {options.repeat}:")
    print(f"  runbook-exec show (terminal, same run)        {min(shows):6.2f} / "
          f"{statistics.median(shows):6.2f} s")  # fmt: skip
    for name, values in timings.items():
        parsed = [p for p, _ in values]
        loaded = [load for _, load in values]
        print(
            f"  {name:46s} rendered {min(parsed):5.2f} / {statistics.median(parsed):5.2f} s, "
            f"loaded {min(loaded):5.2f} / {statistics.median(loaded):5.2f} s"
        )
    print(f"  API GET /api/v1/runs (8 clients)              {api_rate(url, token):6.0f} requests/s")


if __name__ == "__main__":
    main()
