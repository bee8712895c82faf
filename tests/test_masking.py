"""Secret masking: in texts, inside structures, and across the chunks of a stream."""

from __future__ import annotations

import json
import random

import pytest

from runbook_exec.masking import MASK, Secrets
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
