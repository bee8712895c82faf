"""Secret values kept out of everything recorded or shown: in a text, inside a structure
(before it is encoded, so JSON escaping cannot hide a value from the mask), and in a byte
stream as it arrives, where a secret split across two chunks is caught all the same.

A secret is masked as written and in the forms a command most often prints it in: base64
(standard and URL-safe, padded or not, and the part of it that stays the same wherever the
secret lies inside a longer base64 text), hex (lower and upper case) and URL encoding
(`quote`, `quote_plus`, every byte percent-encoded). Encoded forms shorter than
`SHORTEST_FORM` characters are not masked: they would match ordinary text everywhere.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from typing import Any, AnyStr
from urllib.parse import quote, quote_plus

MASK = "********"
MASK_BYTES = MASK.encode()
SHORTEST_FORM = 4


def encoded_forms(secret: str) -> set[str]:
    """The encoded forms of `secret` that are masked besides the secret itself."""
    raw = secret.encode("utf-8")
    forms = {raw.hex(), raw.hex().upper(), "".join(f"%{byte:02X}" for byte in raw)}
    forms |= {quote(secret), quote(secret, safe=""), quote_plus(secret)}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode("ascii")
        forms |= {whole, whole.rstrip("=")}
        forms |= {_base64_core(encode, raw, offset) for offset in (0, 1, 2)}
    return {form for form in forms if len(form) >= SHORTEST_FORM} - {secret}


def _base64_core(encode: Callable[[bytes], bytes], raw: bytes, offset: int) -> str:
    """The base64 characters made of `raw`'s bits alone when `raw` starts `offset` bytes
    (modulo 3) into a longer encoded text: the characters it shares with its neighbours at
    either end depend on them, and are left out."""
    text = encode(bytes(offset) + raw + bytes(2)).decode("ascii")
    first = -(-8 * offset // 6)  # the first character that starts inside `raw`
    end = 8 * (offset + len(raw)) // 6  # past the last character that ends inside it
    return text[first:end]


class Secrets:
    """The secret values of a run (`texts`, longest first) and every form of them that is
    masked (`forms`, longest first, so a secret inside another is not unmasked piecemeal)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.texts = tuple(sorted({v for v in values if v}, key=len, reverse=True))
        forms = set(self.texts)
        for secret in self.texts:
            forms |= encoded_forms(secret)
        self.forms = tuple(sorted(forms, key=lambda form: (-len(form), form)))
        self.raw = tuple(form.encode("utf-8") for form in self.forms)

    def adding(self, values: Iterable[str]) -> Secrets:
        """These secrets and `values` too."""
        more = [v for v in values if v and v not in self.texts]
        return Secrets([*self.texts, *more]) if more else self

    def text(self, text: str) -> str:
        if not self.forms:
            return text
        pieces, end = _masked_pieces(text, self.forms, len(text), MASK)
        return "".join(pieces) + text[end:] if pieces else text

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

    def __init__(self, forms: tuple[bytes, ...]) -> None:
        self.forms = tuple(sorted(forms, key=len, reverse=True))
        self.longest = len(self.forms[0])
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        return self._mask(self.held + chunk, final=False)

    def finish(self) -> bytes:
        return self._mask(self.held, final=True)

    def _mask(self, data: bytes, *, final: bool) -> bytes:
        # A match may only be decided at positions where every form would fit in `data`;
        # the rest is held back.
        settled = len(data) if final else max(0, len(data) - self.longest + 1)
        pieces, end = _masked_pieces(data, self.forms, settled, MASK_BYTES)
        keep_from = max(end, settled)
        self.held = data[keep_from:]
        return b"".join(pieces) + data[end:keep_from] if pieces else data[:keep_from]


def _masked_pieces(
    data: AnyStr, forms: Sequence[AnyStr], settled: int, mask: AnyStr
) -> tuple[list[AnyStr], int]:
    """`data` up to the end of its last match starting before `settled`, as pieces with
    every match replaced by the mask, and where that end is. Matches are taken from the
    left, the longest one at a place (`forms` are longest first), and do not overlap."""
    # Where each form is next found, kept between matches: each form is searched for
    # once, and again only when a match has passed over the place it was found at.
    found = [data.find(form, 0, settled + len(form) - 1) for form in forms]
    pieces: list[AnyStr] = []
    start = 0
    while True:
        hits = [at for at in found if at >= 0]
        if not hits:
            return pieces, start
        at = min(hits)
        form = forms[found.index(at)]  # the first, so the longest, found there
        pieces += (data[start:at], mask)
        start = at + len(form)
        for index, was in enumerate(found):
            if 0 <= was < start:
                found[index] = data.find(forms[index], start, settled + len(forms[index]) - 1)
