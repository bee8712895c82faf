"""The handover report: what changed where, who asked and who approved, what failed and
what was rolled back, the exact way back, and the handover checklist — one file, made from
the verified record and checkable against it.

Making a report appends a `report.made` event (who, when, which runs, which format): the
report rests on the chain up to that event and names it (seq and hash). Its facts are
built from those events alone (`record.History`), so `audit verify --report` rebuilds
them from the store or from an export, renders them again, and compares the whole text:
an edited number, name or line is found. What was seen on the hosts (`--check`) is shown
apart, as observed, and is not part of what verify can prove.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InputError, NotFound, Problem
from ..record import RecordAltered
from .facts import REPORT_EVENT, Selection, build, selected
from .render import FORMATS, KIND, embedded, render

if TYPE_CHECKING:
    from ..inventory import Host
    from ..service import Service

LANGS = ("en", "zh")

__all__ = ["FORMATS", "LANGS", "Selection", "Verdict", "make", "verify"]


def make(
    service: Service,
    selection: Selection,
    fmt: str,
    lang: str,
    hosts: Mapping[str, Host] | None = None,
    known_hosts: Any = None,
) -> str:
    """The report for `selection` in `fmt` and `lang`, recorded as made now. With `hosts`
    (an inventory), each host's live release is also read over SSH (observed).

    What the chain cannot hold by itself is settled before the `report.made` event and
    written into it: the record's problems (tables that disagree with the events), and
    the SHA-256 of what was observed on the hosts. So a report that drops its problems or
    changes its observations no longer matches the event that made it."""
    from ..recorders import Auditor
    from ..store.audit import canonical, sha256_hex

    selection.check()
    if fmt not in FORMATS:
        raise InputError(Problem(f"{fmt!r}: one of {', '.join(FORMATS)}", field="--format"))
    if lang not in LANGS:
        raise InputError(Problem(f"{lang!r}: one of {', '.join(LANGS)}", field="--lang"))
    store, record = service.store, service.record
    before = record.history()
    try:
        chosen = selected(before, selection)  # nothing is recorded for a report of nothing
    except NotFound as exc:
        if before.flags:  # the record cannot say: refused as such, not "not found"
            raise RecordAltered(
                f"{exc}, but the audit chain does not hold: {before.flags[0]}"
            ) from None
        raise NotFound(f"{exc} in the state store {store.where}") from None
    problems = [str(f) for f in before.flags]
    for details in chosen:
        for flag in record.run(details.run.id, outputs=False).flags:
            if str(flag) not in problems:
                problems.append(str(flag))
    observed = None
    if hosts is not None:
        observed = _observed(
            service, [h for d in chosen for b in d.run.batches for h in b], hosts, known_hosts
        )
    store.require_key()
    made = Auditor.outside_runs(store, service.operator).event(
        REPORT_EVENT,
        selection=selection.to_dict(),
        format=fmt,
        lang=lang,
        problems=problems,
        observed_sha256=None if observed is None else sha256_hex(canonical(observed)),
    )
    anchor = store.append_audit(made)
    history = record.history(upto=anchor, keep=frozenset({REPORT_EVENT}))
    if anchor not in history.events:  # the chain does not hold: say who made it anyway
        history.events[anchor] = {**made, "seq": anchor}
    facts = build(history, selection, anchor)
    return render(_document(fmt, lang, facts, observed, problems))


def _document(
    fmt: str, lang: str, facts: dict[str, Any], observed: Any, problems: list[str]
) -> dict[str, Any]:
    """A report's whole data, in its one order: what is rendered, and embedded."""
    return {
        "schema": 1,
        "report": KIND,
        "format": fmt,
        "lang": lang,
        "facts": facts,
        "observed": observed,
        "problems": problems,
    }


def _observed(
    service: Service, names: Sequence[str], hosts: Mapping[str, Host], known_hosts: Any
) -> dict[str, Any]:
    wanted = set(names)
    chosen = {name: host for name, host in hosts.items() if name in wanted}
    live = service.releases(chosen, check=True, known_hosts=known_hosts)
    rows = [
        {
            "host": r.host,
            "root": r.root,
            "recorded": r.live,
            "found": r.found if r.problem is None else r.problem,
            "state": "drift" if r.drift else "ok",
        }
        for r in live.rows
    ]
    return {"rows": rows, "drift": sorted({r["host"] for r in rows if r["state"] == "drift"})}


@dataclass
class Verdict:
    """What checking a report found: nothing (it holds), or each way it does not."""

    findings: list[str] = field(default_factory=list)
    anchor: int = 0
    events: int = 0
    observed: int = 0  # observations it carries, which the record cannot confirm

    @property
    def ok(self) -> bool:
        return not self.findings


def verify(text: str, rows: Sequence[Mapping[str, Any]], keys: Any) -> Verdict:
    """Check a report against the chain (`rows`, from the store or an export): the chain
    holds up to the report's event, that event made this report (its selection, format,
    language, the problems it recorded, the digest of what was observed), every fact is
    what the events say, and the text is exactly, character for character, the document
    those facts render. Nothing else in the file is taken from it."""
    from ..record import history_of
    from ..store.audit import canonical, sha256_hex
    from ..store.keys import AuditKeyError

    document = embedded(text)
    if document is None:
        raise InputError(Problem("not a runbook-exec report (no report data found in it)"))
    try:
        facts = document["facts"]
        anchor = int(facts["made"]["event"])
        selection = Selection.from_dict(facts["selection"])
        said_hash = str(facts["chain"]["head"]["hash"])
        fmt, lang = str(document["format"]), str(document["lang"])
        observed = document.get("observed")
        if fmt not in FORMATS or lang not in LANGS or anchor < 1:
            raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(Problem("not a runbook-exec report (its data is malformed)")) from None
    verdict = Verdict(anchor=anchor)
    history = history_of(rows, keys, upto=anchor, keep=frozenset({REPORT_EVENT}))
    verdict.events = history.verified.count
    finding = history.verified.finding
    if finding is not None and finding.missing_key:
        raise AuditKeyError(
            f"cannot verify the report: {finding} ({history.verified.count} events verified "
            "before it); nothing is known to be wrong, but nothing from there on is checked"
        )
    if finding is not None:
        verdict.findings.append(f"the audit chain does not hold: {finding}")
        return verdict
    if history.head != anchor or history.head_hash != said_hash:
        verdict.findings.append(
            f"the chain has no event {anchor} with hash {said_hash}: not the chain this "
            "report was made from, or it was cut"
        )
        return verdict
    made = history.events.get(anchor) or {}
    problems = made.get("problems") or []
    digest = made.get("observed_sha256")
    if (
        made.get("type") != REPORT_EVENT
        or made.get("selection") != selection.to_dict()
        or made.get("format") != fmt
        or made.get("lang") != lang
    ):
        verdict.findings.append(
            f"event {anchor} did not make this report (it records another selection, "
            "format or language)"
        )
        return verdict
    if (digest is None) != (observed is None) or (
        digest is not None
        and (not isinstance(observed, dict) or sha256_hex(canonical(observed)) != digest)
    ):
        verdict.findings.append(
            f"what it says was observed on the hosts is not what event {anchor} recorded"
        )
        observed = None
    if isinstance(observed, dict):
        verdict.observed = len(observed.get("rows") or [])
    try:
        rebuilt = build(history, selection, anchor)
        again = render(_document(fmt, lang, rebuilt, observed, list(problems)))
    except Exception as exc:  # any failure to rebuild is a finding, never a crash
        verdict.findings.append(f"its facts cannot be rebuilt from the chain: {exc}")
        return verdict
    difference = _first_difference(rebuilt, facts)
    if difference is not None:
        verdict.findings.append(f"a fact differs from the chain: {difference}")
    if document.get("problems") != problems:
        verdict.findings.append(
            f"the record problems it shows are not those event {anchor} recorded"
        )
    if again != text:
        verdict.findings.append(f"the text was changed: {_first_line_changed(again, text)}")
    if problems:
        verdict.findings.append(
            "it was made from a record that did not verify: " + "; ".join(map(str, problems))
        )
    return verdict


def _first_difference(expected: Any, found: Any, path: str = "") -> str | None:
    """Where two JSON values first differ, as a path and both values."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in list(expected) + [k for k in found if k not in expected]:
            where = f"{path}.{key}" if path else str(key)
            if key not in found or key not in expected:
                return f"{where}: {'missing' if key not in found else 'not in the record'}"
            inner = _first_difference(expected[key], found[key], where)
            if inner:
                return inner
        return None
    if isinstance(expected, list) and isinstance(found, list):
        for index, (a, b) in enumerate(zip(expected, found, strict=False)):
            inner = _first_difference(a, b, f"{path}[{index}]")
            if inner:
                return inner
        if len(expected) != len(found):
            return f"{path}: {len(found)} entries, the record has {len(expected)}"
        return None
    if expected != found:
        return f"{path} is {found!r}; the record says {expected!r}"
    return None


def _first_line_changed(expected: str, found: str) -> str:
    """Where the text first differs from what the record renders: the line, and the words
    around the first character that differs, as found and as rendered."""
    old, new = expected.split("\n"), found.split("\n")
    for number, (was, now) in enumerate(zip(old, new, strict=False), 1):
        if was != now:
            return f"line {number}: {_around(now, was)}"
    if len(old) != len(new):
        return f"it has {len(new)} lines; the record renders {len(old)}"
    return "its line endings"


def _around(found: str, expected: str, width: int = 40) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b),
        min(len(found), len(expected)),
    )
    start = max(0, at - width)
    return (
        f"{found[start : at + width]!r}, where the record renders {expected[start : at + width]!r}"
    )
