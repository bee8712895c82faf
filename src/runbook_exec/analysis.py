"""Carrying out an analysis: asking Prometheus, judging each answer, tallying the verdicts as
Argo Rollouts does (a failure limit, an inconclusive limit, a limit of errors in a row),
and comparing the batch with its baseline by a Mann-Whitney U test, as Kayenta does.

The conditions and the clock are given, so the tally is tested without a server; the
queries go to a real Prometheus over its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from .steps.analysis import AnalysisSpec, measurement_value

ANSWER_LIMIT = 4 * 1024 * 1024


class Verdict(StrEnum):
    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


@dataclass(frozen=True)
class Measurement:
    """One answer and what it was judged: what the analysis records, one event each."""

    number: int  # 1, 2, …; 0 for the comparison with the baseline
    query: str  # as sent
    at: float  # the evaluation time sent (seconds since the epoch)
    verdict: Verdict
    value: float | list[float] | None = None
    message: str = ""
    series: int = 0  # how many series answered
    baseline: dict[str, Any] | None = None  # the comparison's figures

    def as_event(self) -> dict[str, Any]:
        shown: Any = self.value
        if isinstance(shown, float) and not math.isfinite(shown):
            shown = str(shown)  # NaN and ±Inf are not JSON
        elif isinstance(shown, list):
            shown = [v if math.isfinite(v) else str(v) for v in shown]
        return {
            "number": self.number,
            "query": self.query,
            "at": round(self.at, 3),
            "value": shown,
            "verdict": str(self.verdict),
            "message": self.message,
            "series": self.series,
            **({"baseline": self.baseline} if self.baseline is not None else {}),
        }


@dataclass
class Outcome:
    verdict: Verdict
    message: str
    measurements: list[Measurement] = field(default_factory=list)

    def table(self) -> str:
        """The measurements as lines of text: the step's output."""
        lines = [f"{'#':>3}  {'verdict':<12}  {'value':<14}  note"]
        for m in self.measurements:
            number = "vs" if m.number == 0 else str(m.number)
            lines.append(
                f"{number:>3}  {m.verdict:<12}  {measurement_value(m.value):<14}  {m.message}"
            )
        return "\n".join([*lines, self.message]) + "\n"


def _count(number: int, what: str) -> str:
    return f"{number} {what}{'s' if number != 1 else ''}"


# --- Prometheus ---------------------------------------------------------------------------------


class QueryError(Exception):
    """Prometheus could not be asked, or did not answer as its API says."""


def _get(url: str, headers: Mapping[str, str], timeout: float) -> Any:
    import urllib.error  # 0.3 s to import: only when an analysis runs
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise QueryError("Prometheus is asked over HTTP: an http:// or https:// URL")

    from .transports.http import without_redirects

    opener = without_redirects()  # a redirect is an error: headers go where they are meant
    request = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(ANSWER_LIMIT + 1)
    except urllib.error.HTTPError as exc:  # 400/422: a bad query; the answer says why
        if 300 <= exc.code < 400:
            raise QueryError(f"HTTP {exc.code}: a redirect, not followed") from None
        body = exc.read(ANSWER_LIMIT + 1)
        try:
            said = json.loads(body).get("error") or body[:200].decode(errors="replace")
        except (ValueError, AttributeError):
            said = body[:200].decode(errors="replace")
        raise QueryError(f"HTTP {exc.code}: {said}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise QueryError(str(getattr(exc, "reason", exc))) from None
    if len(body) > ANSWER_LIMIT:
        raise QueryError(f"the answer is larger than {ANSWER_LIMIT // 1024 // 1024} MiB")
    try:
        answer = json.loads(body)
    except ValueError:
        raise QueryError("the answer is not JSON: is this the Prometheus API?") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        said = answer.get("error") if isinstance(answer, dict) else None
        raise QueryError(f"Prometheus says: {said or 'no success'}")
    return answer.get("data")


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise QueryError(f"not a number: {text!r}") from None


def instant(
    base: str, query: str, at: float, headers: Mapping[str, str], timeout: float
) -> tuple[float | list[float] | None, int]:
    """The value of `query` at `at`: one number for a scalar or a single series, a list
    for several, None for no data; and how many series answered."""
    from urllib.parse import urlencode

    params = urlencode({"query": query, "time": f"{at:.3f}"})
    data = _get(f"{base.rstrip('/')}/api/v1/query?{params}", headers, timeout)
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return _number(result[1]), 1
    if kind == "vector" and isinstance(result, list):
        if not all(isinstance(s, dict) and _pair(s.get("value")) for s in result):
            raise QueryError("a malformed answer: a vector's series without a [time, value]")
        values = [_number(s["value"][1]) for s in result]
        if not values:
            return None, 0
        return (values[0] if len(values) == 1 else values), len(values)
    if kind == "matrix":
        raise QueryError("a range vector: ask for one value at a time (e.g. with rate())")
    raise QueryError(f"an answer of type {kind!r}, not a number")


def samples(
    base: str,
    query: str,
    start: float,
    end: float,
    step: float,
    headers: Mapping[str, str],
    timeout: float,
) -> list[float]:
    """Every value of every series of `query` from `start` to `end`, `step` apart."""
    from urllib.parse import urlencode

    params = urlencode(
        {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    )
    data = _get(f"{base.rstrip('/')}/api/v1/query_range?{params}", headers, timeout)
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list):
        raise QueryError("no series in the answer")
    if not all(isinstance(s, dict) and isinstance(s.get("values"), list) for s in result):
        raise QueryError("a malformed answer: a matrix's series without values")
    values = [_number(v[1]) for s in result for v in s["values"] if _pair(v)]
    return [v for v in values if math.isfinite(v)]


# --- the tally ---------------------------------------------------------------------------------

Judge = Callable[[str, Any], Any]
"""Evaluates a condition with `result` bound to a value."""


def judge(spec: AnalysisSpec, value: float | list[float] | None, evaluate: Judge) -> Verdict:
    """One value's verdict, as Argo Rollouts gives it: with both conditions, a value that
    meets neither is inconclusive; no data at all is inconclusive."""
    if value is None:
        return Verdict.INCONCLUSIVE
    if spec.failure is not None and evaluate(spec.failure, value):
        return Verdict.FAILED
    if spec.success is None:
        return Verdict.SUCCESSFUL
    if evaluate(spec.success, value):
        return Verdict.SUCCESSFUL
    return Verdict.INCONCLUSIVE if spec.failure is not None else Verdict.FAILED


async def analyse(
    spec: AnalysisSpec,
    query: str,
    evaluate: Judge,
    measured: Callable[[Measurement], Awaitable[None]],
    sleep: Callable[[float], Awaitable[bool]],
    *,
    baseline: str | None = None,
    clock: Callable[[], float] = time.time,
    stopping: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Measure `count` times, `interval` apart after `initial_delay`, and tally. It ends
    early once a limit is passed. `sleep(seconds)` returns False when the run is stopping
    (the analysis then ends as an error); `baseline`: the comparison's query, rendered, if
    there are hosts to compare with."""
    measurements: list[Measurement] = []
    counts = dict.fromkeys(Verdict, 0)
    errors_in_a_row = 0

    async def take(number: int) -> None:
        nonlocal errors_in_a_row
        at = clock()
        value: float | list[float] | None = None
        series = 0
        try:
            value, series = await bounded(
                spec.timeout, instant, spec.prometheus, query, at, spec.headers, spec.timeout,
                stopping=stopping,
            )  # fmt: skip
        except QueryError as exc:
            verdict, message = Verdict.ERROR, str(exc)
        else:
            try:
                verdict = judge(spec, value, evaluate)
                message = "no data" if value is None else ""
            except Exception as exc:  # a condition that cannot be evaluated on this value
                verdict = Verdict.ERROR
                several = " (several series: `result` is a list)" if series > 1 else ""
                message = f"the condition cannot be evaluated on this answer{several}: {exc}"
        counts[verdict] += 1
        errors_in_a_row = errors_in_a_row + 1 if verdict == Verdict.ERROR else 0
        measurement = Measurement(number, query, at, verdict, value, message, series)
        measurements.append(measurement)
        await measured(measurement)

    count, interval = int(spec.count), float(spec.interval)
    started = clock()
    if spec.initial_delay and not await sleep(float(spec.initial_delay)):
        return Outcome(Verdict.ERROR, "stopped before the first measurement", measurements)
    first = clock()
    for number in range(1, count + 1):
        if number > 1:
            due = first + (number - 1) * interval
            if not await sleep(max(0.0, due - clock())):
                return Outcome(Verdict.ERROR, "stopped during the analysis", measurements)
        await take(number)
        if counts[Verdict.FAILED] > spec.failure_limit:
            return Outcome(
                Verdict.FAILED,
                f"{_count(counts[Verdict.FAILED], 'failed measurement')}, more than the "
                f"failure_limit of {spec.failure_limit}",
                measurements,
            )
        if errors_in_a_row > spec.error_limit:
            return Outcome(
                Verdict.ERROR,
                f"{_count(errors_in_a_row, 'measurement')} in a row could not be taken, more than "
                f"the error_limit of {spec.error_limit}",
                measurements,
            )
        if counts[Verdict.INCONCLUSIVE] > spec.inconclusive_limit:
            return Outcome(
                Verdict.INCONCLUSIVE,
                f"{_count(counts[Verdict.INCONCLUSIVE], 'inconclusive measurement')}, more "
                f"than the inconclusive_limit of {spec.inconclusive_limit}",
                measurements,
            )
    if spec.compare is not None and baseline is not None:
        compared = await compare(spec, query, baseline, started, clock())
        measurements.append(compared)
        await measured(compared)
        if compared.verdict != Verdict.SUCCESSFUL:
            return Outcome(
                compared.verdict, f"against the baseline: {compared.message}", measurements
            )
    taken = count
    if counts[Verdict.SUCCESSFUL] == 0:  # errors under the limit, and nothing else
        return Outcome(
            Verdict.ERROR,
            f"no measurement of {taken} succeeded ({_count(counts[Verdict.ERROR], 'error')})",
            measurements,
        )
    return Outcome(
        Verdict.SUCCESSFUL,
        f"passed: {counts[Verdict.SUCCESSFUL]} of {taken} measurements successful"
        + (" and no worse than the baseline" if spec.compare and baseline else ""),
        measurements,
    )


async def compare(
    spec: AnalysisSpec, query: str, baseline: str, start: float, end: float
) -> Measurement:
    """The batch's samples against the baseline's over the analysis: failed when the batch
    is significantly worse (one-sided Mann-Whitney U, at `alpha`)."""
    assert spec.compare is not None
    rule = spec.compare
    try:
        canary, base = await asyncio.gather(
            *(
                bounded(
                    spec.timeout,
                    samples,
                    spec.prometheus,
                    asked,
                    start,
                    end,
                    rule.step,
                    spec.headers,
                    spec.timeout,
                )
                for asked in (query, baseline)
            )
        )
    except QueryError as exc:
        return Measurement(0, baseline, end, Verdict.ERROR, None, str(exc))
    figures: dict[str, Any] = {"query": baseline, "canary_samples": len(canary)}
    figures["baseline_samples"] = len(base)
    if len(canary) < 3 or len(base) < 3:
        message = f"too few samples to compare ({len(canary)} and {len(base)}; 3 each at least)"
        return Measurement(0, query, end, Verdict.INCONCLUSIVE, None, message, 0, figures)
    p_higher, p_lower = mann_whitney(canary, base)
    p = p_higher if rule.worse == "higher" else p_lower
    canary_median, base_median = median(canary), median(base)
    figures.update(
        canary_median=canary_median, baseline_median=base_median, p=round(p, 6), alpha=rule.alpha
    )
    worse = p < rule.alpha
    message = (
        f"median {canary_median:.6g} against {base_median:.6g}: "
        f"{'significantly ' + rule.worse if worse else 'not significantly ' + rule.worse} "
        f"(p={p:.3g}, alpha={rule.alpha:g})"
    )
    verdict = Verdict.FAILED if worse else Verdict.SUCCESSFUL
    return Measurement(0, query, end, verdict, canary_median, message, 0, figures)


T = TypeVar("T")


async def bounded(
    seconds: float,
    call: Callable[..., T],
    *args: Any,
    stopping: Callable[[], bool] = lambda: False,
) -> T:
    """`call(*args)` in a thread of its own, waited for `seconds` at most (a server that
    answers a byte at a time is not bounded by a socket timeout), or until `stopping()`.
    The thread is a daemon: one left behind neither holds up the run nor keeps its
    process from ending."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def work() -> None:
        try:
            value = call(*args)
        except BaseException as exc:
            error = exc  # the name `exc` is gone once the except block ends
            outcome = lambda: future.set_exception(error)  # noqa: E731
        else:
            outcome = lambda: future.set_result(value)  # noqa: E731
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=work, name="analysis-query", daemon=True).start()
    deadline = loop.time() + seconds
    while not future.done():
        left = deadline - loop.time()
        if left <= 0:
            raise QueryError(f"no whole answer within {seconds:g}s")
        if stopping():
            raise QueryError("stopped while waiting for the answer")
        await asyncio.wait({future}, timeout=min(0.2, left))
    return future.result()


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def mann_whitney(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """One-sided p-values that `x` tends to be higher than `y`, and lower: the U statistic
    with mid-ranks for ties, by the normal approximation with tie and continuity
    corrections (as SciPy's `mannwhitneyu(..., method="asymptotic")` gives them)."""
    n1, n2 = len(x), len(y)
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, group) in zip(ranks, pooled, strict=True) if group == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    if sigma == 0:
        return 1.0, 1.0
    mean = n1 * n2 / 2
    z_higher = (u - mean - 0.5) / sigma
    z_lower = (mean - u - 0.5) / sigma
    upper = 0.5 * math.erfc(z_higher / math.sqrt(2))
    lower = 0.5 * math.erfc(z_lower / math.sqrt(2))
    return upper, lower
