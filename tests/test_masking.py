"""Secret masking: in texts, inside structures, and across the chunks of a stream."""

from __future__ import annotations

import base64
import json
import random
from urllib.parse import quote, quote_plus

import pytest

from runbook_exec.masking import MASK, SHORTEST_FORM, Secrets
from runbook_exec.transports.ssh import OutputCapture

SECRETS = Secrets(["s3cr3t-Value", "s3cr3t", 'pa"ss\\word'])


def streamed(data: bytes, cuts: list[int], secrets: Secrets = SECRETS) -> bytes:
    mask = secrets.stream()
    assert mask is not None
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return b"".join(mask.feed(p) for p in pieces) + mask.finish()


def test_a_secret_split_at_every_possible_chunk_boundary_is_masked() -> None:
    data = b"before s3cr3t-Value middle s3cr3t end"
    expected = f"before {MASK} middle {MASK} end".encode()
    for cut in range(1, len(data)):
        assert streamed(data, [cut]) == expected, cut
    for cut in range(1, len(data) - 1):  # byte by byte around every boundary
        assert streamed(data, list(range(cut, len(data)))) == expected


def test_random_chunkings_mask_exactly_like_masking_the_whole_text() -> None:
    rng = random.Random(7)
    words = ["s3cr3t", "s3cr3t-Value", "s3cr3", "Value", "x", "\n", "ss3cr3t-Valu", "é"]
    for _ in range(300):
        text = "".join(rng.choice(words) for _ in range(rng.randint(0, 30))).encode()
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 5))) if text else []
        assert streamed(text, cuts) == SECRETS.text(text.decode()).encode()


def test_a_longer_secret_is_masked_whole_even_when_a_shorter_one_arrives_first() -> None:
    # "s3cr3t" alone is a secret too; the stream must wait to see "-Value" follow it.
    assert streamed(b"xx s3cr3t-Value yy", [9]) == f"xx {MASK} yy".encode()


@pytest.mark.parametrize("limit", [16, 20, 24, 64])
def test_no_fragment_survives_the_head_and_tail_cut_of_a_long_output(limit: int) -> None:
    capture = OutputCapture(limit, Secrets(["tok-9f3k-LONGER"]))
    data = b"ab" + b"tok-9f3k-LONGER" * 3 + b"z" * 40 + b"tok-9f3k-LONGER"
    for at in range(0, len(data), 5):
        capture.feed(data[at : at + 5])
    capture.finish()
    kept = capture.text()
    for size in range(4, len("tok-9f3k-LONGER") + 1):  # no 4-byte piece of it either
        for start in range(len("tok-9f3k-LONGER") - size + 1):
            assert "tok-9f3k-LONGER"[start : start + size] not in kept.replace(MASK, "#")


def test_structures_are_masked_before_they_are_encoded() -> None:
    # JSON escapes the quote and backslash: a mask applied to the encoded text would miss it.
    result = {"msg": 'got pa"ss\\word', "items": [{"v": "s3cr3t"}], "rc": 0}
    encoded = json.dumps(SECRETS.data(result))
    assert 'pa\\"ss' not in encoded and "s3cr3t" not in encoded
    assert json.loads(encoded) == {"msg": f"got {MASK}", "items": [{"v": MASK}], "rc": 0}


# A secret whose every form differs: '+' in its base64, '/' and ' ' and a non-ASCII letter
# for the URL encodings, a length that base64 pads.
TOKEN = "sé/cret ~key>>1"
RAW = TOKEN.encode()
FORMS = {
    "base64": base64.b64encode(RAW).decode(),
    "base64 without padding": base64.b64encode(RAW).decode().rstrip("="),
    "URL-safe base64": base64.urlsafe_b64encode(RAW).decode(),
    "URL-safe base64 without padding": base64.urlsafe_b64encode(RAW).decode().rstrip("="),
    "hex": RAW.hex(),
    "upper-case hex": RAW.hex().upper(),
    "quote": quote(TOKEN),
    "quote, '/' too": quote(TOKEN, safe=""),
    "quote_plus": quote_plus(TOKEN),
    "every byte percent-encoded": "".join(f"%{byte:02X}" for byte in RAW),
}
ENCODED = Secrets([TOKEN])


def test_the_forms_under_test_are_all_different() -> None:
    assert len({TOKEN, *FORMS.values()}) == len(FORMS) + 1


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_an_encoded_secret_is_masked_in_a_text(form: str) -> None:
    assert ENCODED.text(f"token={form}; next") == f"token={MASK}; next"


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_an_encoded_secret_is_masked_inside_a_structure(form: str) -> None:
    result = {"stdout_lines": [f"Authorization: Basic {form}"], form: 1, "rc": 0}
    assert ENCODED.data(result) == {
        "stdout_lines": [f"Authorization: Basic {MASK}"],
        MASK: 1,
        "rc": 0,
    }


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_an_encoded_secret_split_at_every_chunk_boundary_is_masked(form: str) -> None:
    data = f"before {form} after".encode()
    expected = f"before {MASK} after".encode()
    for cut in range(1, len(data)):
        assert streamed(data, [cut], ENCODED) == expected, cut
    assert streamed(data, list(range(1, len(data))), ENCODED) == expected  # byte by byte


@pytest.mark.parametrize("before", range(7))
@pytest.mark.parametrize("after", range(4))
def test_a_secret_inside_a_longer_base64_text_is_masked_at_any_alignment(
    before: int, after: int
) -> None:
    # The secret's bytes start at any offset modulo 3 of what was encoded, with bytes of
    # other data on either side. Every character made of the secret's bits alone is
    # masked; the at most two characters at each edge that mix in the neighbours' bits
    # may stay.
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(bytes(range(200, 200 + before)) + RAW + b"\xfe" * after).decode()
        first = -(-8 * before // 6)  # the first character made of the secret's bits alone
        end = 8 * (before + len(RAW)) // 6  # past the last one
        for masked in (
            ENCODED.text(blob),
            streamed(blob.encode(), [len(blob) // 2], ENCODED).decode(),
        ):
            head, mask, tail = masked.partition(MASK)
            assert mask, masked
            assert blob.startswith(head) and len(head) <= first, masked
            assert blob.endswith(tail) and len(tail) <= len(blob) - end, masked


def test_encoded_forms_shorter_than_the_floor_are_left_alone() -> None:
    # "a" is "61" in hex and "YQ" in unpadded base64: too short to mask without masking
    # ordinary text. "YQ==" is long enough, and masked.
    short = Secrets(["a"])
    assert SHORTEST_FORM == 4
    assert short.text("61 YQ ") == "61 YQ "
    assert short.text("YQ==") == MASK
    assert streamed(b"61 YQ YQ==", [4], short) == f"61 YQ {MASK}".encode()


def test_random_chunkings_of_encoded_forms_mask_exactly_like_the_whole_text() -> None:
    rng = random.Random(11)
    words = [*FORMS.values(), TOKEN, "%C3", "c8Op", "x", "\n", "é", "+", "=="]
    for _ in range(300):
        text = "".join(rng.choice(words) for _ in range(rng.randint(0, 12))).encode()
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 6))) if text else []
        assert streamed(text, cuts, ENCODED) == ENCODED.text(text.decode()).encode()
