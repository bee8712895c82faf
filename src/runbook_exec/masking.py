"""Secret values kept out of everything recorded or shown: in a text, inside a structure
(before it is encoded, so JSON escaping cannot hide a value from the mask), and in a byte
stream as it arrives, where a secret split across two chunks is caught all the same."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "********"


class Secrets:
    """The secret values of a run, longest first (so a secret inside another is not unmasked
    piecemeal)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.texts = tuple(sorted({v for v in values if v}, key=len, reverse=True))
        self.raw = tuple(t.encode("utf-8") for t in self.texts)

    def text(self, text: str) -> str:
        for secret in self.texts:
            text = text.replace(secret, MASK)
        return text

    def data(self, value: Any) -> Any:
        """`value` with every string in it masked, through dicts, lists and tuples."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def stream(self) -> StreamMask | None:
        """A mask for one byte stream, or None when there is nothing to mask."""
        return StreamMask(self.raw) if self.raw else None


class StreamMask:
    """Masks a byte stream chunk by chunk. Bytes that could still be the start of a secret
    are held back until the next chunk (or `finish`) says whether they are."""

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self.secrets = secrets
        self.longest = max(len(s) for s in secrets)
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        return self._mask(self.held + chunk, final=False)

    def finish(self) -> bytes:
        return self._mask(self.held, final=True)

    def _mask(self, data: bytes, *, final: bool) -> bytes:
        # A match may only be decided at positions where every secret would fit in `data`;
        # the rest is held back.
        settled = len(data) if final else max(0, len(data) - self.longest + 1)
        out = bytearray()
        start = 0
        while True:
            found = [(data.find(s, start), s) for s in self.secrets]
            hits = [(at, s) for at, s in found if 0 <= at < settled]
            if not hits:
                break
            at = min(a for a, _ in hits)
            secret = next(s for s in self.secrets if data.startswith(s, at))  # longest there
            out += data[start:at] + MASK.encode()
            start = at + len(secret)
        keep_from = max(start, settled)
        out += data[start:keep_from]
        self.held = data[keep_from:]
        return bytes(out)
