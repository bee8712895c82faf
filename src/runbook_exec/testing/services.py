"""Real services on loopback beside the lab's hosts, for the tests, the benchmarks and the
demo: a Prometheus server (Debian's `prometheus`) scraping the hosts' sample apps, traffic
to those apps, and a receiver of webhooks that checks their signatures."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """One Prometheus server of its own (a folder, a port), scraping every second the
    targets given: {instance label: "127.0.0.1:PORT"}. The instance label is the inventory
    host name, so that a query can say `instance=~"{{ batch_hosts | join('|') }}"`."""

    def __init__(self, folder: Path, targets: Mapping[str, str]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.targets = dict(targets)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        if not Path(PROMETHEUS).exists():
            raise RuntimeError(f"{PROMETHEUS} not found: install Debian's prometheus package")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "app",
                    "static_configs": [
                        {"targets": [address], "labels": {"instance": name}}
                        for name, address in self.targets.items()
                    ],
                }
            ],
        }
        path = self.folder / "prometheus.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        log = (self.folder / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        text = (self.folder / "prometheus.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"prometheus did not start on {self.port}:\n{text}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as answer:
            return list(json.load(answer)["data"]["result"])

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Until `promql` has an answer (a target scraped, a rate known)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.query(promql)
            if found:
                return found
            time.sleep(0.25)
        raise AssertionError(f"prometheus has no answer to {promql!r} after {timeout:g}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Traffic:
    """Requests to each URL, `every` seconds apart, from one thread per URL, counting what
    answered and how: the load a real service has, for its metrics to measure."""

    def __init__(self, urls: Iterable[str], every: float = 0.02) -> None:
        self.urls = list(urls)
        self.every = every
        self.counts: dict[str, dict[str, int]] = {u: {} for u in self.urls}
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._load, args=(u,), daemon=True) for u in self.urls
        ]
        self.lock = threading.Lock()

    def _load(self, url: str) -> None:
        while not self.stopping.is_set():
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    outcome = str(answer.status)
            except urllib.error.HTTPError as exc:
                outcome = str(exc.code)
            except OSError:
                outcome = "refused"
            with self.lock:
                self.counts[url][outcome] = self.counts[url].get(outcome, 0) + 1
            self.stopping.wait(self.every)

    def failed(self, url: str) -> int:
        """Requests to `url` that did not answer 200."""
        with self.lock:
            return sum(n for outcome, n in self.counts[url].items() if outcome != "200")

    def total(self, url: str) -> int:
        with self.lock:
            return sum(self.counts[url].values())

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=5)


class WebhookReceiver:
    """An HTTP server that takes webhooks, checks each one's signature (HMAC-SHA256 of the
    body with `secret`, in `X-Runbook-Exec-Signature: sha256=HEX`), and keeps them.
    `fail_first` answers 503 to that many requests before it takes one. With no secret it
    takes what comes unsigned (Apprise's json:// posts)."""

    def __init__(self, secret: str | None, fail_first: int = 0) -> None:
        self.secret = secret.encode() if secret is not None else None
        self.fail_first = fail_first
        self.received: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.requests = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests += 1
                if receiver.requests <= receiver.fail_first:
                    return self._answer(503)
                given = self.headers.get("X-Runbook-Exec-Signature", "")
                if receiver.secret is not None and not hmac.compare_digest(
                    "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest(), given
                ):
                    receiver.refused.append(given)
                    return self._answer(401)
                receiver.received.append(
                    {"headers": dict(self.headers.items()), "body": json.loads(body)}
                )
                self._answer(204)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def events(self) -> list[str]:
        return [str(r["body"].get("event")) for r in self.received]

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
