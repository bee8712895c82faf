"""`analysis:` judges a batch by its metrics: a PromQL query asked of Prometheus at an
interval, each answer held against a success (and failure) condition, as Argo Rollouts'
AnalysisTemplate does; optionally the batch against the hosts not yet changed, as Kayenta
does. Once per batch, on no host: its verdict is every live host's result in the batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..durations import format_duration
from ..fields import Duration, Strict, Templated, Timeout
from .base import FieldPath, Scope, StepBase


class CompareSpec(Strict):
    """The batch against a baseline: both queries' samples over the analysis, compared by a
    Mann-Whitney U test. It fails when the batch is significantly worse."""

    baseline: str
    """The same measure, over the hosts not yet changed (`baseline_hosts`)."""
    worse: Literal["higher", "lower"] = "higher"
    """Which way is worse: a higher error rate or latency (the default), or a lower
    success rate."""
    alpha: float = Field(default=0.05, gt=0, lt=1)
    """The significance level: a smaller value asks for stronger evidence."""
    step: Duration = Field(default=1.0, gt=0)
    """How far apart the samples are taken (the query range's step)."""


class AnalysisSpec(Strict):
    prometheus: str
    """The server's base URL, e.g. http://prometheus:9090."""
    query: str
    """PromQL, a template: `batch_hosts` are this batch's hosts."""
    success: str | None = None
    """An expression on `result`, e.g. `result < 0.01`."""
    failure: str | None = None
    """An expression on `result`; with `success` too, a value that meets neither is
    inconclusive."""
    interval: Duration | Templated = 10.0
    count: int | Templated = 3
    initial_delay: Duration | Templated = 0.0
    failure_limit: int = Field(default=0, ge=0)
    """How many failed measurements are tolerated; one more fails the analysis."""
    inconclusive_limit: int = Field(default=0, ge=0)
    error_limit: int = Field(default=4, ge=0)
    """How many measurements in a row may fail to be taken (Prometheus down, a bad
    answer); one more fails the analysis."""
    inconclusive: Literal["ask", "fail", "pass"] = "ask"
    """What an inconclusive analysis does: ask a person (the run waits, as at `approve`),
    fail, or pass."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every query (e.g. an Authorization header; mark its value secret)."""
    timeout: Timeout = 10.0
    """For each query."""
    compare: CompareSpec | None = None

    @field_validator("count")
    @classmethod
    def _some(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 10_000:
            raise ValueError("an analysis takes from 1 to 10,000 measurements")
        return value

    @field_validator("prometheus")
    @classmethod
    def _http(cls, value: str) -> str:
        if "{{" not in value and not value.startswith(("http://", "https://")):
            raise ValueError("Prometheus is asked over HTTP: an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _a_condition(self) -> AnalysisSpec:
        if self.success is None and self.failure is None:
            raise ValueError("an analysis needs `success`, `failure` or both")
        return self


class AnalysisStep(StepBase):
    kind = "analysis"
    scope = Scope.BATCH
    analysis: AnalysisSpec

    def expressions(self) -> Iterator[tuple[FieldPath, str]]:
        for key in ("success", "failure"):
            expression = getattr(self.analysis, key)
            if expression is not None:
                yield ("analysis", key), expression

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        return describe_analysis(action["analysis"])


def measurement_value(value: Any) -> str:
    """A measured value as a person reads it: 6 significant digits, "no data" for none."""
    if value is None:
        return "no data"
    if isinstance(value, list):
        more = ", …" if len(value) > 5 else ""
        return "[" + ", ".join(measurement_value(v) for v in value[:5]) + more + "]"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:.6g}"
    return str(value)


def describe_analysis(spec: Mapping[str, Any]) -> str:
    """One line: what is asked, how often, and what passes."""
    count = spec.get("count", 3)
    every = spec.get("interval", 10.0)
    with contextlib.suppress(TypeError, ValueError):
        every = format_duration(float(every))
    judged = " and ".join(
        f"{word} when {spec[key]}"
        for word, key in (("passes", "success"), ("fails", "failure"))
        if spec.get(key)
    )
    times = f"{count} time{'s' if str(count) != '1' else ''} every {every}"
    compare = " against the baseline" if spec.get("compare") else ""
    return f"ask {spec.get('prometheus')} {times}{compare}: {spec.get('query')} ({judged})"
