"""`http:` checks a URL from the controller: the status expected, a text in the body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from ..fields import Strict, Templated
from ..transports.base import CommandResult
from .base import HostContext, StepBase


class HttpSpec(Strict):
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    status: int | list[int] | Templated = 200
    contains: str | None = None
    equals: str | None = None
    """The whole body, leading and trailing white space aside (a version: `contains: "1.0"`
    is met by "1.0.1" too)."""
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    validate_certs: bool = True


class HttpStep(StepBase):
    kind = "http"
    over_ssh = False
    http: HttpSpec

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        spec = action["http"]
        expect = f" expect {spec.get('status', 200)}"
        contains = f" containing {spec['contains']!r}" if spec.get("contains") else ""
        equals = f" saying exactly {spec['equals']!r}" if spec.get("equals") is not None else ""
        return f"{spec.get('method', 'GET')} {spec['url']}{expect}{contains}{equals}"

    async def run(self, host: HostContext) -> CommandResult:
        from ..transports.http import check_http  # urllib costs 0.3 s to import; only if used

        return await check_http(self.http.model_dump(mode="json"), host.timeout)
