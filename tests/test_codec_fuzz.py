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
from overlay.messages import RELO_TOKEN, MessageCode

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
