"""Hostile input: well over 100,000 random and mutated frames, and only CodecError may escape.

Mutations start from valid encoded messages of every body type and mostly fix the header's
length field up afterwards, so that they get past the first check and reach the lists, options,
bodies and security block. A frame that still decodes must re-encode to the very same bytes:
the decoder accepts exactly one encoding of each message.
"""

from __future__ import annotations

import functools
import random
import time
import tracemalloc
from collections.abc import Callable

import pytest
from codec_samples import messages
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.codec import (
    CodecError,
    decode_body,
    decode_header,
    decode_message,
    encode_body,
    encode_message,
)
from overlay.messages import (
    RELO_TOKEN,
    ApplyAns,
    ApplyReq,
    MessageCode,
    StoreBatchAns,
    StoreBatchReq,
)

SEEDS = [encode_message(m) for m in messages(rich=True) + messages(rich=False)]
BODIES = [encode_body(m.body) for m in messages(rich=True)]
HUGE = (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFF, 0x10000, 0xFFFF, 0xFF)
CODES = [int(c) for c in MessageCode] + [0, 0x05, 0x1B, 0xFFFE]
MUTATIONS_PER_EXAMPLE = 300


def mutate(rng: random.Random, data: bytes, fix_length: bool) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf.append(rng.randrange(256))
            continue
        i = rng.randrange(len(buf))
        op = rng.randrange(8)
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.randrange(256)
        elif op == 2:
            del buf[rng.randrange(len(buf) + 1) :]
        elif op == 3:
            buf[i:i] = rng.randbytes(rng.randint(1, 24))
        elif op == 4:
            del buf[i : i + rng.randint(1, 24)]
        elif op == 5:  # a length-sized field overwritten with a huge value
            width = rng.choice((1, 2, 3, 4))
            buf[i : i + width] = rng.choice(HUGE).to_bytes(4, "big")[-width:]
        elif op == 6:  # a length nudged by a little
            width = rng.choice((1, 2, 4))
            old = int.from_bytes(buf[i : i + width], "big")
            new = (old + rng.choice((-17, -16, -1, 1, 2, 16))) % (1 << (8 * width))
            buf[i : i + width] = new.to_bytes(width, "big")
        else:  # a slice duplicated
            j = rng.randrange(len(buf))
            buf[j:j] = buf[i : i + rng.randint(1, 40)]
    if fix_length and len(buf) >= 20:
        buf[16:20] = len(buf).to_bytes(4, "big")
    return bytes(buf)


class Counter:
    frames = 0


def throw(decoder: Callable[[bytes], object], frame: bytes) -> object | None:
    try:
        return decoder(frame)
    except CodecError:
        return None


def check_frame(frame: bytes) -> None:
    Counter.frames += 1
    msg = throw(decode_message, frame)
    header = throw(decode_header, frame)
    if msg is not None:
        assert header is not None
        assert encode_message(msg) == frame  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(SEEDS), st.integers(0, 2**32 - 1))
def fuzz_messages(seed: bytes, rng_seed: int) -> None:
    rng = random.Random(rng_seed)
    for _ in range(MUTATIONS_PER_EXAMPLE):
        check_frame(mutate(rng, seed, fix_length=rng.random() < 0.85))


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(BODIES), st.integers(0, 2**32 - 1))
def fuzz_bodies(seed: tuple[int, bytes], rng_seed: int) -> None:
    code, body = seed
    rng = random.Random(rng_seed)
    for _ in range(MUTATIONS_PER_EXAMPLE):
        data = mutate(rng, body, fix_length=False)
        use = code if rng.random() < 0.9 else rng.choice(CODES)
        Counter.frames += 1
        decoded = throw(functools.partial(decode_body, use), data)
        if decoded is not None:
            assert encode_body(decoded) == (use, data)  # type: ignore[arg-type]


def random_frames(rng: random.Random, n: int) -> None:
    for _ in range(n):
        size = rng.choice((0, 1, 37, 38, 39, 60, 200, 1500))
        check_frame(rng.randbytes(size))
        # random bytes behind a header that looks valid: right token, right total length
        tail = rng.randbytes(rng.randrange(0, 400))
        head = bytearray(rng.randbytes(38))
        head[0:4] = RELO_TOKEN.to_bytes(4, "big")
        head[16:20] = (38 + len(tail)).to_bytes(4, "big")
        if rng.random() < 0.7:  # small list lengths so that some lists parse
            for off in (32, 34, 36):
                head[off : off + 2] = rng.randrange(0, 40).to_bytes(2, "big")
        check_frame(bytes(head) + tail)


def test_fuzz_only_codec_error_escapes() -> None:
    Counter.frames = 0
    start = time.perf_counter()
    fuzz_messages()
    fuzz_bodies()
    random_frames(random.Random(6940), 8_000)
    elapsed = time.perf_counter() - start
    assert Counter.frames >= 100_000, Counter.frames
    assert elapsed < 60, f"{Counter.frames} frames took {elapsed:.1f} s"


def test_mutations_reach_deep_into_messages() -> None:
    """The fuzzer is only worth its count if many mutated frames get past the header."""
    rng = random.Random(1)
    header_ok = full_ok = 0
    for _ in range(3000):
        frame = mutate(rng, rng.choice(SEEDS), fix_length=True)
        header_ok += throw(decode_header, frame) is not None
        full_ok += throw(decode_message, frame) is not None
    assert header_ok > 600 and full_ok > 30, (header_ok, full_ok)


def test_huge_length_fields_fail_fast_and_small() -> None:
    """Every 1-, 2- and 4-byte window of every sample overwritten with all-ones (a length of up
    to 2^32-1): each decode fails or succeeds within milliseconds without big allocations."""
    frames = []
    for seed in SEEDS[: len(SEEDS) // 2]:
        for width in (1, 2, 4):
            for i in range(20, len(seed) - width + 1):
                buf = bytearray(seed)
                buf[i : i + width] = b"\xff" * width
                frames.append(bytes(buf))
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        worst = 0.0
        # CPU time of this thread, not wall time: work proportional to a declared length would
        # show; other processes on a loaded machine do not.
        for frame in frames:
            t0 = time.thread_time()
            throw(decode_message, frame)
            throw(decode_header, frame)
            worst = max(worst, time.thread_time() - t0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(frames) > 5000
    assert peak - base < 2_000_000, peak - base
    assert worst < 0.05, worst


def test_a_huge_declared_body_is_rejected_quickly() -> None:
    seed = SEEDS[0]
    lists = sum(int.from_bytes(seed[i : i + 2], "big") for i in (32, 34, 36))
    body_len_at = 38 + lists + 2
    buf = bytearray(seed)
    buf[body_len_at : body_len_at + 4] = b"\xff\xff\xff\xff"
    t0 = time.thread_time()
    try:
        decode_message(bytes(buf))
    except CodecError as exc:
        assert "message body length 4294967295 exceeds message" in str(exc)
    else:
        raise AssertionError("a 4 GiB body inside a small frame decoded")
    assert time.thread_time() - t0 < 0.01


# --- ApplyReq / ApplyAns (docs/wire.md §7) -------------------------------------------------

APPLY_MESSAGES = [
    m for m in messages(rich=True) + messages(rich=False) if isinstance(m.body, ApplyReq | ApplyAns)
]
APPLY_BODIES = sorted({encode_body(m.body) for m in APPLY_MESSAGES})
APPLY_CODES = (int(MessageCode.APPLY_REQ), int(MessageCode.APPLY_ANS))
APPLY_IDS = [f"{MessageCode(code).name}-{len(body)}B" for code, body in APPLY_BODIES]


def test_apply_samples_are_there() -> None:
    assert {type(m.body) for m in APPLY_MESSAGES} == {ApplyReq, ApplyAns}
    assert {code for code, _ in APPLY_BODIES} == set(APPLY_CODES)


@pytest.mark.parametrize(("code", "body"), APPLY_BODIES, ids=APPLY_IDS)
def test_apply_body_truncated_anywhere_is_rejected(code: int, body: bytes) -> None:
    """Every proper prefix of an ApplyReq/ApplyAns body fails to decode, and so does the body
    with any number of bytes appended."""
    for n in range(len(body)):
        with pytest.raises(CodecError):
            decode_body(code, body[:n])
    for extra in (b"\x00", b"\x00" * 4, b"\xff" * 17):
        with pytest.raises(CodecError):
            decode_body(code, body + extra)


@pytest.mark.parametrize(
    "index", range(len(APPLY_MESSAGES)), ids=[type(m.body).__name__ for m in APPLY_MESSAGES]
)
def test_apply_message_truncated_anywhere_is_rejected(index: int) -> None:
    """Every proper prefix of a whole ApplyReq/ApplyAns message fails, whether or not the header's
    length field is fixed up to match."""
    frame = encode_message(APPLY_MESSAGES[index])
    for n in range(len(frame)):
        cut = bytearray(frame[:n])
        with pytest.raises(CodecError):
            decode_message(bytes(cut))
        if n >= 20:
            cut[16:20] = n.to_bytes(4, "big")
            with pytest.raises(CodecError):
                decode_message(bytes(cut))


@pytest.mark.parametrize(("code", "body"), APPLY_BODIES, ids=APPLY_IDS)
def test_apply_body_bit_flips(code: int, body: bytes) -> None:
    """Each single bit flip either fails with CodecError or decodes to a message that encodes
    back to exactly the flipped bytes; flips in the length prefixes never decode."""
    decoded = rejected = 0
    for i in range(len(body)):
        for bit in range(8):
            flipped = bytearray(body)
            flipped[i] ^= 1 << bit
            try:
                out = decode_body(code, bytes(flipped))
            except CodecError:
                rejected += 1
                continue
            decoded += 1
            assert encode_body(out) == (code, bytes(flipped))
    assert rejected > 0 and decoded > 0, (rejected, decoded)
    # The lengths right in the body (resource id; operation / replicas list) must be exact.
    prefixes = [0, 29, 30, 31, 32] if code == MessageCode.APPLY_REQ else [12, 13]
    for i in prefixes:
        if i >= len(body):
            continue
        for bit in range(8):
            flipped = bytearray(body)
            flipped[i] ^= 1 << bit
            with pytest.raises(CodecError):
                decode_body(code, bytes(flipped))


def test_apply_message_mutations() -> None:
    """The general mutator, aimed at the Apply messages only: only CodecError escapes and what
    decodes re-encodes to the same bytes."""
    Counter.frames = 0
    rng = random.Random(0x8001)
    seeds = [encode_message(m) for m in APPLY_MESSAGES]
    for _ in range(20_000):
        check_frame(mutate(rng, rng.choice(seeds), fix_length=rng.random() < 0.9))
    assert Counter.frames == 20_000


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(APPLY_CODES), st.binary(max_size=120))
def test_apply_random_bodies(code: int, data: bytes) -> None:
    try:
        out = decode_body(code, data)
    except CodecError:
        return
    assert isinstance(out, ApplyReq | ApplyAns)
    assert encode_body(out) == (code, data)


@st.composite
def apply_like(draw: st.DrawFn) -> tuple[int, bytes]:
    """Bodies that are mostly well-formed: a sample body with a random slice replaced, so that
    the decoder gets past the fixed fields into the lists."""
    code, body = draw(st.sampled_from(APPLY_BODIES))
    start = draw(st.integers(0, len(body)))
    stop = draw(st.integers(start, min(len(body), start + 8)))
    return code, body[:start] + draw(st.binary(max_size=8)) + body[stop:]


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(apply_like())
def test_apply_spliced_bodies(sample: tuple[int, bytes]) -> None:
    code, data = sample
    try:
        out = decode_body(code, data)
    except CodecError:
        return
    assert encode_body(out) == (code, data)


# --- StoreBatchReq / StoreBatchAns (docs/wire.md §8) ---------------------------------------

BATCH_MESSAGES = [
    m
    for m in messages(rich=True) + messages(rich=False)
    if isinstance(m.body, StoreBatchReq | StoreBatchAns)
]
BATCH_BODIES = sorted({encode_body(m.body) for m in BATCH_MESSAGES})
BATCH_CODES = (int(MessageCode.STORE_BATCH_REQ), int(MessageCode.STORE_BATCH_ANS))
BATCH_IDS = [f"{MessageCode(code).name}-{len(body)}B" for code, body in BATCH_BODIES]


def batch_framing_offsets(code: int, body: bytes) -> list[int]:
    """Offsets of the bytes that frame a batch body's elements: the list length, each element's
    length and, in an answer, each element's code. Walked here independently of the codec."""
    out = [0, 1, 2, 3]
    pos = 4
    while pos < len(body):
        head = 6 if code == MessageCode.STORE_BATCH_ANS else 4
        out += range(pos, pos + head)
        pos += head + int.from_bytes(body[pos + head - 4 : pos + head], "big")
    assert pos == len(body)
    return out


def test_batch_samples_are_there() -> None:
    assert {type(m.body) for m in BATCH_MESSAGES} == {StoreBatchReq, StoreBatchAns}
    assert {code for code, _ in BATCH_BODIES} == set(BATCH_CODES)
    assert b"\x00\x00\x00\x00" in {body for _, body in BATCH_BODIES}  # an empty batch
    assert any(len(batch_framing_offsets(c, b)) > 4 + 2 * 6 for c, b in BATCH_BODIES)


@pytest.mark.parametrize(("code", "body"), BATCH_BODIES, ids=BATCH_IDS)
def test_batch_body_truncated_anywhere_is_rejected(code: int, body: bytes) -> None:
    """Every proper prefix of a StoreBatchReq/StoreBatchAns body fails to decode, and so does the
    body with any bytes appended, whatever they are."""
    for n in range(len(body)):
        with pytest.raises(CodecError):
            decode_body(code, body[:n])
    for extra in (
        b"\x00",
        b"\x00" * 4,
        b"\x00" * 6,
        b"\x00\x08\x00\x00\x00\x02\x00\x00",
        b"\xff" * 26,
    ):
        with pytest.raises(CodecError):
            decode_body(code, body + extra)


@pytest.mark.parametrize(
    "index", range(len(BATCH_MESSAGES)), ids=[type(m.body).__name__ for m in BATCH_MESSAGES]
)
def test_batch_message_truncated_anywhere_is_rejected(index: int) -> None:
    """Every proper prefix of a whole batch message fails, whether or not the header's length
    field is fixed up to match."""
    frame = encode_message(BATCH_MESSAGES[index])
    for n in range(len(frame)):
        cut = bytearray(frame[:n])
        with pytest.raises(CodecError):
            decode_message(bytes(cut))
        if n >= 20:
            cut[16:20] = n.to_bytes(4, "big")
            with pytest.raises(CodecError):
                decode_message(bytes(cut))


@pytest.mark.parametrize(("code", "body"), BATCH_BODIES, ids=BATCH_IDS)
def test_batch_body_bit_flips(code: int, body: bytes) -> None:
    """Each single bit flip either fails with CodecError or decodes to a batch that encodes back
    to exactly the flipped bytes; a flip in the list length or in any element's length or answer
    code never decodes."""
    framing = set(batch_framing_offsets(code, body))
    decoded = rejected = 0
    for i in range(len(body)):
        for bit in range(8):
            flipped = bytearray(body)
            flipped[i] ^= 1 << bit
            try:
                out = decode_body(code, bytes(flipped))
            except CodecError:
                rejected += 1
                continue
            assert i not in framing, (i, bit)
            decoded += 1
            assert type(out) is type(decode_body(code, body))
            assert encode_body(out) == (code, bytes(flipped))
    assert rejected >= 8 * len(framing), (rejected, len(framing))
    if len(body) > 4:
        assert decoded > 0, (rejected, decoded)


def test_batch_message_mutations() -> None:
    """The general mutator, aimed at the batch messages only: only CodecError escapes and what
    decodes re-encodes to the same bytes."""
    Counter.frames = 0
    rng = random.Random(0x8003)
    seeds = [encode_message(m) for m in BATCH_MESSAGES]
    decoded = 0
    for _ in range(20_000):
        frame = mutate(rng, rng.choice(seeds), fix_length=rng.random() < 0.9)
        check_frame(frame)
        decoded += throw(decode_message, frame) is not None
    assert Counter.frames == 20_000
    assert decoded > 200, decoded  # many mutations land in values, not only in framing


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(BATCH_CODES), st.binary(max_size=120))
def test_batch_random_bodies(code: int, data: bytes) -> None:
    try:
        out = decode_body(code, data)
    except CodecError:
        return
    assert isinstance(out, StoreBatchReq | StoreBatchAns)
    assert encode_body(out) == (code, data)


@st.composite
def batch_like(draw: st.DrawFn) -> tuple[int, bytes]:
    """Batch bodies that are mostly well-formed: a sample with a random slice replaced, with
    elements repeated or dropped and the list length sometimes fixed up, so that the decoder
    gets past the list into the elements."""
    code, body = draw(st.sampled_from(BATCH_BODIES))
    start = draw(st.integers(0, len(body)))
    stop = draw(st.integers(start, min(len(body), start + 8)))
    data = body[:start] + draw(st.binary(max_size=8)) + body[stop:]
    if draw(st.booleans()) and len(data) >= 4:
        data = (len(data) - 4).to_bytes(4, "big") + data[4:]
    return code, data


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(batch_like())
def test_batch_spliced_bodies(sample: tuple[int, bytes]) -> None:
    code, data = sample
    try:
        out = decode_body(code, data)
    except CodecError:
        return
    assert encode_body(out) == (code, data)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(BATCH_BODIES),
    st.lists(st.tuples(st.integers(0, 9), st.binary(min_size=1, max_size=3)), max_size=4),
)
def test_batch_elements_reshuffled(
    sample: tuple[int, bytes], edits: list[tuple[int, bytes]]
) -> None:
    """Whole elements cut out, duplicated or corrupted at their start, with the list length kept
    right: what decodes re-encodes to the same bytes and has one element per framed element."""
    code, body = sample
    elements, pos, head = [], 4, 6 if code == MessageCode.STORE_BATCH_ANS else 4
    while pos < len(body):
        end = pos + head + int.from_bytes(body[pos + head - 4 : pos + head], "big")
        elements.append(body[pos:end])
        pos = end
    for which, junk in edits:
        if not elements:
            break
        i = which % len(elements)
        if which % 3 == 0:
            elements.append(elements[i])
        elif which % 3 == 1:
            del elements[i]
        else:
            elements[i] = elements[i][:head] + junk + elements[i][head + len(junk) :]
    payload = b"".join(elements)
    data = len(payload).to_bytes(4, "big") + payload
    try:
        out = decode_body(code, data)
    except CodecError:
        return
    assert encode_body(out) == (code, data)
    count = len(out.stores) if isinstance(out, StoreBatchReq) else len(out.answers)  # type: ignore[union-attr]
    assert count == len(elements)
