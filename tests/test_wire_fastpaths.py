"""The shortcuts on the per-frame path give what the general code gives: the ACK mask
without its loop, frames cut from any split of the stream, messages that just miss a
decoder shortcut."""

from __future__ import annotations

import dataclasses
import random

from codec_samples import messages

from overlay.codec import decode_message, encode_message
from overlay.framing import (
    AckFrame,
    DataFrame,
    FrameDecoder,
    ReceiveWindow,
    encode_ack,
    encode_data,
)
from overlay.messages import (
    FetchAns,
    FetchKindResponse,
    ForwardingHeader,
    GenericCertificate,
    MessageExtension,
    NodeDestination,
    ResourceDestination,
    SecurityBlock,
    Signature,
    StoredData,
)

MOD = 1 << 32


def test_ack_for_matches_the_mask_loop_on_any_sequence_pattern() -> None:
    rng = random.Random(5)
    for _ in range(300):
        window, shadow = ReceiveWindow(), ReceiveWindow()
        seq = rng.choice((0, MOD - 40, rng.randrange(MOD)))
        for _ in range(rng.randint(1, 150)):
            r = rng.random()
            if r < 0.8:
                seq = (seq + 1) % MOD
            elif r < 0.9:
                seq = (seq - rng.randint(0, 70)) % MOD  # a duplicate or an old sequence
            else:
                seq = (seq + rng.randint(2, 70)) % MOD  # a gap
            shadow.add(seq)
            assert window.ack_for(seq) == encode_ack(seq, shadow.received_mask(seq))


def test_frames_are_the_same_however_the_stream_is_split() -> None:
    rng = random.Random(9)
    frames: list[DataFrame | AckFrame] = []
    for i in range(60):
        if rng.random() < 0.5:
            frames.append(DataFrame(i, rng.randbytes(rng.choice((0, 1, 40, 700, 5000)))))
        else:
            frames.append(AckFrame(i, rng.randrange(MOD)))
    stream = b"".join(
        encode_data(f.sequence, f.payload)
        if isinstance(f, DataFrame)
        else encode_ack(f.ack_sequence, f.received)
        for f in frames
    )
    for _ in range(30):
        decoder, got, pos = FrameDecoder(8000), [], 0
        while pos < len(stream):
            step = rng.choice((1, 3, 8, 9, 100, 2000, 20000))
            got += decoder.feed(stream[pos : pos + step])
            pos += step
        assert got == frames and decoder.buffered == 0


def test_messages_that_just_miss_a_shortcut_decode_the_general_way() -> None:
    base = next(m for m in messages(rich=False) if isinstance(m.body, FetchAns))
    entry = StoredData(1, 2, b"k", b"v" * 200)
    signed = dataclasses.replace(entry, signature=Signature(1, 2, 1, b"\x00\x00", b"s"))
    header = ForwardingHeader(
        overlay=7,
        transaction_id=9,
        via_list=(NodeDestination(1), NodeDestination(2)),
        destination_list=(ResourceDestination(3), NodeDestination(4)),
    )
    variants = [
        dataclasses.replace(base, body=FetchAns((FetchKindResponse(5, 6, (entry, signed)),))),
        dataclasses.replace(base, header=header),
        dataclasses.replace(base, extensions=(MessageExtension(1, False, b""),)),
        dataclasses.replace(base, security=SecurityBlock((GenericCertificate(0, b"c"),))),
        dataclasses.replace(base, security=SecurityBlock(signature=Signature())),
    ]
    for msg in variants:
        data = encode_message(msg)
        assert decode_message(data) == msg
        assert encode_message(decode_message(data)) == data
