"""The demo: six real sshd hosts on loopback, and runbook-exec used on them as a user would.

1. `check` a deploy, and see a bad parameter refused before anything connects;
2. deploy release 1.0.0 of a small HTTP app everywhere, canary first;
3. gray-release 2.0.0: canary, a quarter, the rest, approving each gate as an operator;
4. gray-release a broken 3.0.0: its health check fails on the canary, which is rolled back
   automatically; no other host ever receives it;
5. `releases --check`: what is live where, as recorded and as found on the hosts; `runs`;
   and `audit verify`: the hash chain of every event of all of it is intact;
6. the handover: a checklist item ticked, the change's report (Markdown here; HTML and
   Chinese too) and `audit verify --report`, which proves every line of it;
7. the web view: `serve`, a user signed in, the runs listed;
8. progressive delivery (where Debian's prometheus and nginx are installed, as
   `scripts/demo` does as root): a canary of a release with a high error rate, judged by
   its metrics in a real Prometheus and rolled back with no person in the loop, a signed
   webhook told of each turn; then blue-green behind nginx on two more hosts, a switch and
   a switch back while clients poll through the proxy, counting failed requests.

The state store is the embedded SQLite file, in a temporary folder removed at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from runbook_exec.testing.lab import SshLab, sample_release, stop_apps

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("runbook-exec"))


def say(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def step(title: str | None, *args: str, expect: int = 0, cwd: Path = REPO) -> None:
    if title:
        say(title)
    print("$ " + " ".join(shlex.quote(a) for a in ["runbook-exec", *args]), flush=True)
    done = subprocess.run([CLI, *args], cwd=cwd)
    if done.returncode != expect:
        sys.exit(f"demo: expected exit {expect}, got {done.returncode}")


def serving(lab: SshLab) -> str:
    import urllib.request

    answers = []
    for host in lab.hosts:
        try:
            url = f"http://127.0.0.1:{host.app_port}/"
            with urllib.request.urlopen(url, timeout=5) as response:
                answers.append(f"{host.name}={response.read().decode().strip()}")
        except OSError:
            answers.append(f"{host.name}=down")
    return "  ".join(answers)


def web_view(store: list[str]) -> str:
    """Start `serve` on a free port, add a viewer, sign in as a browser would, and read the
    runs page: how many runs it lists."""
    import http.cookiejar
    import re
    import socket
    import time
    import urllib.parse
    import urllib.request

    password = "demo-pass-1234"
    subprocess.run(
        [CLI, "users", "add", "dana", "--password-stdin", *store],
        input=password, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    print(f"$ runbook-exec serve --bind 127.0.0.1:{port}", flush=True)
    server = subprocess.Popen(
        [CLI, "serve", "--bind", f"127.0.0.1:{port}", *store], cwd=REPO, stdout=subprocess.DEVNULL
    )
    try:
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                opener.open(url + "/login", timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        form = urllib.parse.urlencode({"user": "dana", "password": password, "next": "/runs"})
        page = opener.open(url + "/login", data=form.encode(), timeout=10).read().decode()
        listed = len(re.findall(r'<td><a href="/runs/', page))
        return f"{listed} on {url}/runs (signed in as dana)"
    finally:
        server.terminate()
        server.wait(10)


def progressive_delivery(work: Path, lab: SshLab, ssh: list[str], store: list[str]) -> None:
    from runbook_exec.testing.lab import write_proxy
    from runbook_exec.testing.services import Prometheus, Traffic, WebhookReceiver

    secret = "demo-webhook-secret"
    targets = {h.name: f"127.0.0.1:{h.app_port}" for h in lab.hosts}
    apps = [f"http://127.0.0.1:{h.app_port}/" for h in lab.hosts]
    with (
        Prometheus(work / "prometheus", targets) as prometheus,
        Traffic(apps),
        WebhookReceiver(secret) as hook,
    ):
        (work / "runbook-exec.toml").write_text(
            f'[[notify]]\nwebhook = "{hook.url}"\nsecret = "{secret}"\n'
        )
        prometheus.wait_for('rate(app_requests_total{code="200"}[3s]) > 0')
        v4 = sample_release(work, "4.0.0", error_rate=0.3)
        step(
            "A canary of 4.0.0, which fails 30% of its requests: Prometheus measures this "
            "batch's error rate, the analysis fails it, and the canary is rolled back with no "
            "person in the loop (exit 1)",
            "run", str(REPO / "runbooks" / "canary.yml"), *ssh, *store,
            "-e", "version=4.0.0", "-e", f"artifact={v4}", "-e", f"prometheus={prometheus.url}",
            "-e", "interval=1s", "-e", "count=3", "-e", "window=3s",
            "--no-input", "--change-id", "CHG-1004", "--reason", "new pricing",
            expect=1, cwd=work,
        )  # fmt: skip
        print(f"serving: {serving(lab)}")
        print(f"the webhook received, signatures checked: {', '.join(hook.events())}")
    with SshLab() as pair:
        pair.start(2, prefix="bg", groups={"web": ["bg1", "bg2"]})
        write_proxy(pair)
        inventory = work / "bg-inventory"
        inventory.mkdir()
        shutil.copy(pair.inventory, inventory / "hosts.ini")
        shutil.copytree(REPO / "inventory" / "group_vars", inventory / "group_vars")
        both = ["-i", str(inventory), "--known-hosts", str(pair.known_hosts)]
        book = "runbooks/blue-green.yml"
        v1, v2 = sample_release(work, "1.0.0"), sample_release(work, "2.0.0")
        step(
            "Blue-green on two more hosts: 1.0.0 into the blue slot; nginx starts",
            "run", book, *both, *store, "-e", "version=1.0.0", "-e", f"artifact={v1}",
        )  # fmt: skip
        with Traffic([h.proxy_url for h in pair.hosts], every=0.005) as traffic:
            step(
                "2.0.0 into the idle green slot, checked there, then switched",
                "run", book, *both, *store, "-e", "version=2.0.0", "-e", f"artifact={v2}",
            )  # fmt: skip
            step(
                "Switch back: the blue slot never stopped, so it is the link and a reload",
                "rollback", "-m", "demo", "--known-hosts", str(pair.known_hosts), *store,
            )  # fmt: skip
        total = sum(traffic.total(h.proxy_url) for h in pair.hosts)
        failed = sum(traffic.failed(h.proxy_url) for h in pair.hosts)
        print(f"requests through nginx during the switch and the switch back: {total}, "
              f"failed: {failed}")  # fmt: skip
        stop_apps(pair)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="rbx-demo-"))
    os.chmod(work, 0o755)
    with SshLab() as lab:
        lab.start(6, prefix="web", groups={"web": [f"web{i}" for i in range(1, 7)]})
        inventory = work / "inventory"
        inventory.mkdir()
        shutil.copy(lab.inventory, inventory / "hosts.ini")
        shutil.copytree(REPO / "inventory" / "group_vars", inventory / "group_vars")
        ports = ", ".join(str(h.port) for h in lab.hosts)
        print(
            f"Started {len(lab.hosts)} sshd hosts on 127.0.0.1 (ports {ports}), "
            f"logging in as {lab.user}; inventory in {inventory}"
        )
        store = ["--db", f"sqlite:///{work}/state.db"]
        ssh = ["-i", str(inventory), "--known-hosts", str(lab.known_hosts)]
        v1, v2 = sample_release(work, "1.0.0"), sample_release(work, "2.0.0")
        v3 = sample_release(work, "3.0.0", healthy=False)

        step(
            "Check the runbook, parameters, inventory and templates (connects nowhere)",
            "check",
            "runbooks/deploy.yml",
            "-i",
            str(inventory),
            "-e",
            "version=1.0.0",
            "-e",
            f"artifact={v1}",
        )
        step(
            "A bad parameter is refused before anything connects (exit 2)",
            "run",
            "runbooks/deploy.yml",
            *ssh,
            *store,
            "-e",
            "version=1.0 beta",
            "-e",
            f"artifact={v1}",
            expect=2,
        )

        step(
            "Deploy 1.0.0 everywhere: the canary web1, then half, then the rest",
            "run",
            "runbooks/deploy.yml",
            *ssh,
            *store,
            "-e",
            "version=1.0.0",
            "-e",
            f"artifact={v1}",
            "--change-id",
            "CHG-1001",
            "--reason",
            "first release",
        )
        print(f"serving: {serving(lab)}")

        step(
            "Gray-release 2.0.0: it stops at the first gate and waits for a person (exit 3)",
            "run",
            "runbooks/gray-release.yml",
            *ssh,
            *store,
            "-e",
            "version=2.0.0",
            "-e",
            f"artifact={v2}",
            "-e",
            "bake_time=1s",
            "--no-input",
            "--change-id",
            "CHG-1002",
            "--reason",
            "new search page",
            expect=3,
        )
        runs = subprocess.run(
            [CLI, "runs", "--json", *store], capture_output=True, text=True, check=True, cwd=REPO
        )
        gray = json.loads(runs.stdout)["runs"][0]["run_id"]
        print(f"serving: {serving(lab)}")
        step(
            "The canary looks good: approve, and carry on to the next gate",
            "approve",
            gray,
            "--operator",
            "alice",
            "-m",
            "canary error rate flat",
            *store,
        )
        step(None, "resume", gray, "--no-input", *store, expect=3)
        step(
            "A quarter of the fleet looks good too: approve, and carry on to the end",
            "approve",
            gray,
            "--operator",
            "alice",
            "-m",
            "25% healthy",
            *store,
        )
        step(None, "resume", gray, "--no-input", *store)
        print(f"serving: {serving(lab)}")

        step(
            "Gray-release a broken 3.0.0: the canary fails its health check and is rolled "
            "back automatically; no other host receives it (exit 1)",
            "run",
            "runbooks/gray-release.yml",
            *ssh,
            *store,
            "-e",
            "version=3.0.0",
            "-e",
            f"artifact={v3}",
            "-e",
            "bake_time=1s",
            "--no-input",
            "--change-id",
            "CHG-1003",
            "--reason",
            "faster checkout",
            expect=1,
        )
        print(f"serving: {serving(lab)}")

        step(
            "The 2.0.0 search page is slow after all: undo that gray release, on exactly the "
            "hosts it switched, with restart and health checks",
            "rollback",
            gray,
            "-m",
            "search page slow",
            "--operator",
            "bob",
            *store,
        )
        print(f"serving: {serving(lab)}")

        step(
            "What is live where, as recorded, checked against every host's current link",
            "releases",
            "-i",
            str(inventory),
            "--check",
            "--known-hosts",
            str(lab.known_hosts),
            *store,
        )
        step("Every run, newest first", "runs", *store)
        step("Is the audit trail of all of it intact?", "audit", "verify", *store)

        step(
            "Hand the change over: tick a checklist item the runbook declares",
            "handover",
            "tick",
            gray,
            "Backup verified",
            "-m",
            "restored last night's dump to staging",
            "--operator",
            "carol",
            *store,
        )
        report = work / "CHG-1002.md"
        step(
            "The handover report of change CHG-1002: what changed where, who approved, the "
            "way back, the checklist (Markdown; HTML by default, --lang zh for Chinese)",
            "report",
            "--change-id",
            "CHG-1002",
            "-f",
            "md",
            "-o",
            str(report),
            *store,
        )
        print("\n".join(report.read_text().splitlines()[:22]) + "\n…")
        step(
            "Prove that every fact and every line of the report is what the record says",
            "audit",
            "verify",
            "--report",
            str(report),
            *store,
        )
        say("The web view: `runbook-exec serve`, signed in as a viewer")
        print(f"runs listed: {web_view(store)}")
        if Path("/usr/bin/prometheus").exists() and Path("/usr/sbin/nginx").exists():
            progressive_delivery(work, lab, ssh, store)
        else:
            say("Progressive delivery: skipped (install Debian's prometheus and nginx)")
        stop_apps(lab)
    shutil.rmtree(work, ignore_errors=True)
    print("\nDemo finished; the lab hosts are stopped and its files removed.")


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    main()
