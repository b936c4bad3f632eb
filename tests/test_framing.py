"""Link framing (RFC 6940 §6.6.2) and the RFC 6298 RTO estimator."""

from __future__ import annotations

import pytest

from overlay.framing import (
    AckFrame,
    DataFrame,
    FrameDecoder,
    FramingError,
    ReceiveWindow,
    RtoEstimator,
    acked_by_mask,
    encode_ack,
    encode_data,
)

# By hand from §6.6.2: data(128) | uint32 sequence | opaque message<0..2^24-1>
GOLDEN_DATA = bytes.fromhex("80 0000002a 000005 d2454c4f00")
# ack(129) | uint32 ack_sequence | uint32 received
GOLDEN_ACK = bytes.fromhex("81 deadbeef 80000001")


def test_data_frame_golden_bytes() -> None:
    assert encode_data(42, bytes.fromhex("d2454c4f00")) == GOLDEN_DATA
    assert FrameDecoder(1024).feed(GOLDEN_DATA) == [DataFrame(42, bytes.fromhex("d2454c4f00"))]


def test_ack_frame_golden_bytes() -> None:
    assert encode_ack(0xDEADBEEF, 0x80000001) == GOLDEN_ACK
    assert FrameDecoder(1024).feed(GOLDEN_ACK) == [AckFrame(0xDEADBEEF, 0x80000001)]


def test_decoder_fed_byte_by_byte() -> None:
    stream = (
        encode_data(0, b"hello")
        + encode_ack(7, 0)
        + encode_data(1, b"")
        + encode_data(2, bytes(range(256)) * 3)
    )
    decoder = FrameDecoder(4096)
    frames = []
    for i in range(len(stream)):
        frames.extend(decoder.feed(stream[i : i + 1]))
    assert frames == [
        DataFrame(0, b"hello"),
        AckFrame(7, 0),
        DataFrame(1, b""),
        DataFrame(2, bytes(range(256)) * 3),
    ]
    assert decoder.buffered == 0


def test_decoder_many_frames_in_one_piece_and_split_headers() -> None:
    stream = b"".join(encode_data(i, bytes([i]) * i) for i in range(50))
    decoder = FrameDecoder(4096)
    frames = decoder.feed(stream[:3]) + decoder.feed(stream[3:1000]) + decoder.feed(stream[1000:])
    assert [f.sequence for f in frames if isinstance(f, DataFrame)] == list(range(50))


@pytest.mark.parametrize("kind", [0x00, 0x7F, 0x82, 0xD2, 0xFF])
def test_bad_type_byte(kind: int) -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(encode_ack(1, 0)) == [AckFrame(1, 0)]
    with pytest.raises(FramingError, match="unknown frame type"):
        decoder.feed(bytes([kind]) + b"\x00" * 12)
    # A stream that lost its frame boundaries stays broken.
    with pytest.raises(FramingError):
        decoder.feed(encode_ack(2, 0))


def test_oversize_frame_rejected_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_payload=100)
    assert decoder.feed(encode_data(0, b"x" * 100)) == [DataFrame(0, b"x" * 100)]
    with pytest.raises(FramingError, match="exceeds"):
        # Only the 8-byte header of a 101-byte frame: rejected before any body arrives.
        decoder.feed(bytes.fromhex("80 00000001 000065"))


def test_encoder_limits() -> None:
    with pytest.raises(ValueError):
        encode_data(1 << 32, b"")
    with pytest.raises(ValueError):
        encode_data(0, b"x" * (1 << 24))
    with pytest.raises(ValueError):
        encode_ack(-1, 0)


def test_received_mask_bits_count_back_from_the_acked_sequence() -> None:
    window = ReceiveWindow()
    assert window.received_mask(0) == 0
    for seq in (0, 1, 2, 4):
        window.add(seq)
    # ACK of 5: bit 0 = seq 4, bit 1 = seq 3 (missing), bit 2 = seq 2, bit 3 = 1, bit 4 = 0.
    assert window.received_mask(5) == 0b11101
    assert window.ack_for(5) == bytes.fromhex("81 00000005 0000001d")
    assert sorted(acked_by_mask(5, 0b11101)) == [0, 1, 2, 4]


def test_received_mask_full_window_and_wrap() -> None:
    window = ReceiveWindow()
    for seq in range(100):
        window.add(seq)
    assert window.received_mask(100) == 0xFFFFFFFF
    wrap = ReceiveWindow()
    for seq in (0xFFFFFFFE, 0xFFFFFFFF):
        wrap.add(seq)
    assert wrap.received_mask(0) == 0b11
    assert wrap.received_mask(1) == 0b110  # seq 0 not yet received; -1 and -2 were


def test_rto_first_sample_then_smoothing() -> None:
    est = RtoEstimator(initial=1.0, rto_min=0.2, rto_max=10.0)
    assert est.rto == 1.0 and est.srtt is None
    # First sample R: SRTT=R, RTTVAR=R/2, RTO=SRTT+4*RTTVAR = 3R.
    assert est.sample(0.1) == pytest.approx(0.3)
    assert est.srtt == pytest.approx(0.1) and est.rttvar == pytest.approx(0.05)
    # Second sample: RTTVAR=3/4*0.05+1/4*|0.1-0.3|=0.0875, SRTT=7/8*0.1+1/8*0.3=0.125.
    assert est.sample(0.3) == pytest.approx(0.125 + 4 * 0.0875)


def test_rto_clamped_and_backoff() -> None:
    est = RtoEstimator(initial=1.0, rto_min=0.2, rto_max=10.0)
    for _ in range(50):
        est.sample(0.0001)
    assert est.rto == 0.2
    for _ in range(10):
        est.backoff()
    assert est.rto == 10.0
    big = RtoEstimator(rto_min=0.2, rto_max=10.0)
    assert big.sample(30.0) == 10.0
    with pytest.raises(ValueError):
        RtoEstimator(rto_min=0.0)


def test_good_frames_before_garbage_are_kept_on_the_error() -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(FramingError) as info:
        decoder.feed(encode_data(0, b"ok") + encode_ack(3, 0) + b"GET / HTTP/1.1\r\n")
    assert info.value.frames == (DataFrame(0, b"ok"), AckFrame(3, 0))
