"""Telling people what a run does: webhooks and chat, on run start, an approval waiting, a
failure, a rollback and the end.

Targets are set in the settings file (`runbook-exec.toml` or the user's config.toml):

    [[notify]]
    webhook = "https://hooks.example.com/runbook-exec"
    secret_env = "RBX_WEBHOOK_SECRET"      # the HMAC key, from the environment
    events = ["gate.waiting", "run.failure", "run.rollback", "run.finished"]

    [[notify]]
    apprise = "dingtalk://TOKEN/"          # any Apprise URL: Slack, WeCom, Feishu, email…

A webhook gets the message as JSON, signed: `X-Runbook-Exec-Signature: sha256=HEX`, the
HMAC-SHA256 of the body with the secret. Delivery is in a thread of its own, with retries
and backoff; it never holds up the run and never fails it. When the run's process ends it
waits a few seconds at most for what is still being delivered. Every delivery, and every
one that failed, is an audit event (`notify.delivered`, `notify.failed`) naming the target
by its scheme and host only. Messages are masked like everything else the run records.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import InputError, Problem
from .events import EventSink, HostStatus
from .masking import Secrets

if TYPE_CHECKING:
    from .record import RunRecord
    from .recorders import Auditor

EVENTS = ("run.started", "gate.waiting", "run.failure", "run.rollback", "run.finished")
"""What a target may ask for (all of them when it names none)."""

SIGNATURE_HEADER = "X-Runbook-Exec-Signature"
KEYS = {"webhook", "apprise", "secret", "secret_env", "events", "retries", "timeout"}
DRAIN_SECONDS = 10.0
"""How long the run's process waits, once the run stops, for deliveries still under way."""


@dataclass(frozen=True)
class Target:
    kind: str  # webhook | apprise
    url: str
    secret: str | None = None
    events: frozenset[str] = frozenset(EVENTS)
    retries: int = 3
    timeout: float = 5.0

    @property
    def shown(self) -> str:
        """The target as records name it: scheme and host, never a path, a query or a
        password (a chat URL's token is its secret)."""
        parts = urlsplit(self.url)
        if self.kind == "apprise":
            return f"{parts.scheme}://…"
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}/…"


def targets(settings: Mapping[str, Any], where: str = "settings") -> list[Target]:
    """The `[[notify]]` tables of the settings as targets; a mistake is bad input naming
    the file and the table."""
    tables = settings.get("notify") or []
    if isinstance(tables, Mapping):  # one [notify] table
        tables = [tables]
    found: list[Target] = []
    problems: list[Problem] = []
    for number, table in enumerate(tables):
        field = f"notify[{number}]"

        def bad(message: str, key: str | None = None, field: str = field) -> None:
            problems.append(Problem(message, where, field=f"{field}.{key}" if key else field))

        if not isinstance(table, Mapping):
            bad("must be a table ([[notify]])")
            continue
        for key in sorted(set(table) - KEYS):
            bad(f"unknown key (known: {', '.join(sorted(KEYS))})", key)
        kinds = [k for k in ("webhook", "apprise") if k in table]
        if len(kinds) != 1:
            bad("needs exactly one of `webhook = URL` or `apprise = URL`")
            continue
        kind = kinds[0]
        url = table[kind]
        if not isinstance(url, str) or "://" not in url:
            bad("must be a URL", kind)
            continue
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a port out of range)
        except ValueError as exc:
            bad(f"not a URL: {exc}", kind)
            continue
        if kind == "webhook" and (parts.scheme not in ("http", "https") or not parts.hostname):
            bad("a webhook is an http:// or https:// URL with a host", kind)
        secret = table.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            bad("must be text", "secret")
            continue
        if "secret_env" in table:
            name = table["secret_env"]
            if not isinstance(name, str):
                bad("must be the name of an environment variable", "secret_env")
                continue
            secret = os.environ.get(name)
            if not secret:
                bad(f"the environment has no {name}", "secret_env")
        if kind == "webhook" and not secret:
            bad("a webhook needs `secret` or `secret_env`: its messages are signed")
        if kind == "apprise" and secret is not None:
            bad("an Apprise URL carries its own credentials", "secret")
        events = table.get("events", list(EVENTS))
        if not isinstance(events, list) or not all(e in EVENTS for e in events):
            bad(f"a list of: {', '.join(EVENTS)}", "events")
            continue
        retries = table.get("retries", 3)
        if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 10:
            bad("a whole number from 0 to 10", "retries")
            continue
        timeout = table.get("timeout", 5)
        number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if not number or not math.isfinite(timeout) or not 0 < timeout <= 300:
            bad("a number of seconds, more than 0 and at most 300", "timeout")
            continue
        found.append(Target(kind, url, secret, frozenset(events), retries, float(timeout)))
    if problems:
        raise InputError(problems)
    if any(t.kind == "apprise" for t in found):
        try:
            import apprise  # noqa: F401
        except ImportError:
            raise InputError(
                Problem(
                    "chat targets need Apprise: pip install 'runbook-exec[notify]'",
                    where,
                    field="notify",
                )
            ) from None
    return found


def configured() -> list[Target]:
    """The targets the settings files here name (see `settings`): the last file that has
    `notify` wins, as for every setting."""
    import tomllib

    from . import settings

    found = settings.load()  # every file read and checked
    if "notify" not in found:
        return []
    where = "settings"
    for path in settings.config_files():
        if path.is_file() and "notify" in tomllib.loads(path.read_text(encoding="utf-8")):
            where = str(path)
    return targets(found, where)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


Record = Callable[[str, Mapping[str, Any]], None]
"""Records a delivery: (event type, fields)."""


class Notifier(EventSink):
    """One run's notifications: made from what the run reports (a sink), sent by a thread
    of its own."""

    def __init__(
        self,
        targets: Sequence[Target],
        run: Mapping[str, Any],
        secrets: Secrets,
        record: Record,
    ) -> None:
        self.targets = list(targets)
        self.run = dict(run)
        self.secrets = secrets
        self.record = record
        self.failed_batches: set[int] = set()
        self.batch = 0
        self.rolling_back = False
        # One queue and one thread a target: a slow one holds up no other. Each message
        # is pending until its delivery (or failure) is recorded; what is still pending
        # when the process must end is recorded as not delivered.
        self.lock = threading.Lock()
        self.pending: dict[int, tuple[Target, dict[str, Any]]] = {}
        self.in_flight: set[int] = set()
        self.numbers = itertools.count()
        self.queues: list[queue.Queue[int | None]] = [queue.Queue() for _ in self.targets]
        self.threads = [
            threading.Thread(target=self._deliver_all, args=(n,), name="notify", daemon=True)
            for n in range(len(self.targets))
        ]
        for thread in self.threads:
            thread.start()

    # --- what the run says --------------------------------------------------------------------

    def send(self, event: str, text: str, **fields: Any) -> None:
        """Queue a message to every target that asked for `event`."""
        message = self.secrets.data(
            {
                "event": event,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **self.run,
                **fields,
                "text": text,
            }
        )
        for position, target in enumerate(self.targets):
            if event in target.events:
                with self.lock:
                    number = next(self.numbers)
                    self.pending[number] = (target, message)
                self.queues[position].put(number)

    def _title(self) -> str:
        change = f", {self.run['change_id']}" if self.run.get("change_id") else ""
        return f"run {self.run['run_id']} ({self.run['runbook']} by {self.run['operator']}{change})"

    def started(self, resumed: bool) -> None:
        self.send("run.started", f"{self._title()} {'resumed' if resumed else 'started'}")

    def finished(self, status: str, hosts: Mapping[str, str]) -> None:
        self.send("run.finished", f"{self._title()} {status.replace('_', ' ')}", status=status,
                  hosts=dict(hosts))  # fmt: skip

    def batch_started(self, batch: int, hosts: Sequence[str]) -> None:
        self.batch = batch

    def gate(
        self,
        key: str,
        kind: str,
        message: str,
        status: str,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        if kind == "approve" and status == "waiting":
            text = f"{self._title()} waits for approval: {message}"
            self.send("gate.waiting", text, gate=key, message=message)

    def host_status(self, host: str, status: HostStatus, message: str | None = None) -> None:
        """The first failure of each batch (not one message per host)."""
        if status == HostStatus.FAILED and self.batch not in self.failed_batches:
            self.failed_batches.add(self.batch)
            text = f"{self._title()} failed on {host} in batch {self.batch}: {message or ''}"
            self.send("run.failure", text, host=host, batch=self.batch, message=message)

    def steps_started(
        self, batch: int, section: str, index: int, name: str, hosts: Sequence[str]
    ) -> None:
        if section == "rollback" and not self.rolling_back:
            self.rolling_back = True
            text = f"{self._title()} is rolling back {', '.join(hosts)}"
            self.send("run.rollback", text, hosts=list(hosts))

    # --- delivery ------------------------------------------------------------------------------

    def close(self, wait: float = DRAIN_SECONDS) -> None:
        """Let what is queued go out, for `wait` seconds at most, or until Ctrl-C or a
        SIGTERM cuts the wait short; record what did not go out."""
        import signal

        for waiting in self.queues:
            waiting.put(None)
        deadline = time.monotonic() + wait
        cut = threading.Event()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for which in (signal.SIGINT, signal.SIGTERM):
                handlers[which] = signal.signal(which, lambda *_: cut.set())
        try:
            for thread in self.threads:
                while thread.is_alive() and not cut.is_set() and time.monotonic() < deadline:
                    thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
        finally:
            for which, handler in handlers.items():
                signal.signal(which, handler)
        with self.lock:
            left = sorted(self.pending.items())
            flying = set(self.in_flight)
            self.pending.clear()
        for number, (target, message) in left:
            said = (
                "unknown: still being delivered when the run's process ended"
                if number in flying
                else "not sent: the run's process ended first"
            )
            self._recorded("notify.failed", target, message, 0, said)

    def _deliver_all(self, position: int) -> None:
        while True:
            number = self.queues[position].get()
            if number is None:
                return
            with self.lock:
                item = self.pending.get(number)
                self.in_flight.add(number)
            if item is None:
                continue
            target, message = item
            try:
                kind, attempts, said = self._deliver(target, message)
            except Exception as exc:  # a notifier's bug never reaches the run
                kind, attempts, said = "notify.failed", 0, f"internal error: {exc!r}"
            with self.lock:
                mine = self.pending.pop(number, None) is not None  # else close() took it
                self.in_flight.discard(number)
            if mine:
                self._recorded(kind, target, message, attempts, said)

    def _deliver(self, target: Target, message: Mapping[str, Any]) -> tuple[str, int, str]:
        delay = 0.5
        said = ""
        for attempt in range(1, target.retries + 2):
            ok, said = (webhook if target.kind == "webhook" else chat)(target, message)
            if ok:
                return "notify.delivered", attempt, said
            if attempt <= target.retries:
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        return "notify.failed", target.retries + 1, said

    def _recorded(
        self, kind: str, target: Target, message: Mapping[str, Any], attempts: int, said: str
    ) -> None:
        try:
            self.record(
                kind,
                {
                    "target": target.shown,
                    "via": target.kind,
                    "event_notified": message.get("event"),
                    "attempts": attempts,
                    "outcome": self.secrets.text(said.replace(target.url, target.shown)),
                },
            )
        except Exception as exc:  # the store refused: say so, the run goes on
            import sys

            print(f"warning: a notification's delivery could not be recorded ({exc})",
                  file=sys.stderr)  # fmt: skip


def webhook(target: Target, message: Mapping[str, Any]) -> tuple[bool, str]:
    """POST the message as JSON, signed; (delivered, what the receiver said)."""
    import urllib.error
    import urllib.request

    body = json.dumps(message, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "runbook-exec",
        "X-Runbook-Exec-Event": str(message.get("event")),
        SIGNATURE_HEADER: sign(target.secret or "", body),
    }
    request = urllib.request.Request(target.url, data=body, method="POST", headers=headers)

    from .transports.http import without_redirects

    try:  # a redirect is not a delivery: the message would go elsewhere, as a GET
        with without_redirects().open(request, timeout=target.timeout) as answer:
            return 200 <= answer.status < 300, f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc))


def chat(target: Target, message: Mapping[str, Any]) -> tuple[bool, str]:
    """Through Apprise: the message's text, titled by its event."""
    import logging

    import apprise

    logging.getLogger("apprise").setLevel(logging.CRITICAL)  # it would print the URL
    sender = apprise.Apprise()
    if not sender.add(target.url):
        return False, "Apprise does not know this URL"
    failed = (message.get("status") or "") not in ("", "succeeded")
    kind = apprise.NotifyType.FAILURE if failed else apprise.NotifyType.INFO
    ok = sender.notify(
        title=f"runbook-exec: {message.get('event')}", body=str(message["text"]), notify_type=kind
    )
    return bool(ok), "sent" if ok else "Apprise could not send it"


def for_run(
    found: Iterable[Target], run: RunRecord, secrets: Secrets, auditor: Auditor
) -> Notifier | None:
    """The notifier of `run` for these targets (None for none), its deliveries recorded
    by `auditor`."""
    listed = list(found)
    if not listed:
        return None
    about = {
        "run_id": run.id,
        "runbook": run.runbook_name,
        "operator": run.operator,
        "change_id": run.change_id,
        "reason": run.reason,
    }
    return Notifier(listed, about, secrets, lambda kind, fields: auditor.append(kind, **fields))
