"""RELOAD link framing (RFC 6940 §6.6.2; WIRE.md §1) and the link's RTO estimate, sans-I/O.

Every TCP/TLS connection carries frames::

    DATA: type=0x80 | sequence uint32 | length uint24 | message
    ACK : type=0x81 | ack_sequence uint32 | received uint32

The decoder is incremental because TCP delivers a byte stream in arbitrary pieces.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

DATA_TYPE = 0x80
ACK_TYPE = 0x81
DATA_HEADER_LEN = 8  # type + sequence + uint24 length
ACK_LEN = 9
SEQUENCE_MOD = 1 << 32
MAX_UINT24 = (1 << 24) - 1
DEFAULT_MAX_PAYLOAD = 1 << 20

_ACK = struct.Struct("!BII")
_DATA_HEAD_LEN = struct.Struct("!BIBH")  # type, sequence, uint24 length as high byte + low 16
_FULL_MASK = (1 << 32) - 1


class FramingError(ValueError):
    """The byte stream is not RELOAD framing; the link must be closed.

    ``frames`` holds the good frames that preceded the bad bytes in the same ``feed``.
    """

    def __init__(self, message: str, frames: tuple[Frame, ...] = ()) -> None:
        super().__init__(message)
        self.frames = frames


@dataclass(frozen=True, slots=True)
class DataFrame:
    sequence: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class AckFrame:
    ack_sequence: int
    received: int


Frame = DataFrame | AckFrame


def encode_data(sequence: int, payload: bytes) -> bytes:
    if not 0 <= sequence < SEQUENCE_MOD:
        raise ValueError(f"sequence {sequence} is not a uint32")
    if len(payload) > MAX_UINT24:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a uint24 length")
    n = len(payload)
    return b"".join((_DATA_HEAD_LEN.pack(DATA_TYPE, sequence, n >> 16, n & 0xFFFF), payload))


def encode_ack(ack_sequence: int, received: int) -> bytes:
    if not 0 <= ack_sequence < SEQUENCE_MOD or not 0 <= received < SEQUENCE_MOD:
        raise ValueError("ack_sequence and received must be uint32")
    return _ACK.pack(ACK_TYPE, ack_sequence, received)


class FrameDecoder:
    """Turns stream pieces into frames. After a FramingError the decoder is unusable: the
    stream has lost its frame boundaries, so the only safe move is to close the link.

    Frames are cut straight out of the piece TCP handed over, one copy per payload; only an
    incomplete frame at its end is buffered, and it is not parsed again until enough bytes
    have come to finish it.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 < max_payload <= MAX_UINT24:
            raise ValueError("max_payload must be in 1..2^24-1")
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._need = 0  # bytes the buffered partial frame needs before it is worth parsing
        self._broken: FramingError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken is not None:
            raise self._broken
        buf = self._buffer
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)  # payloads are cut out of it and must be bytes
        frames: list[Frame] = []
        try:
            pos = self._parse(data, frames)
        except FramingError as err:
            self._broken = FramingError(str(err))
            buf.clear()
            raise FramingError(str(err), tuple(frames)) from None
        if pos < len(data):
            buf += memoryview(data)[pos:]
        return frames

    def _parse(self, data: bytes, frames: list[Frame]) -> int:
        """Append the complete frames in ``data`` to ``frames``; returns where the first
        incomplete one starts (and records in ``_need`` how long it will be)."""
        pos, end = 0, len(data)
        max_payload = self.max_payload
        while pos < end:
            kind = data[pos]
            if kind == DATA_TYPE:
                if end - pos < DATA_HEADER_LEN:
                    self._need = DATA_HEADER_LEN
                    return pos
                _, sequence, high, low = _DATA_HEAD_LEN.unpack_from(data, pos)
                length = high << 16 | low
                # Checked before waiting for the body, so a hostile length never makes us
                # buffer it.
                if length > max_payload:
                    raise FramingError(
                        f"frame of {length} bytes exceeds the limit of {max_payload}"
                    )
                stop = pos + DATA_HEADER_LEN + length
                if stop > end:
                    self._need = DATA_HEADER_LEN + length
                    return pos
                frames.append(DataFrame(sequence, data[pos + DATA_HEADER_LEN : stop]))
                pos = stop
            elif kind == ACK_TYPE:
                if end - pos < ACK_LEN:
                    self._need = ACK_LEN
                    return pos
                _, ack_sequence, received = _ACK.unpack_from(data, pos)
                frames.append(AckFrame(ack_sequence, received))
                pos += ACK_LEN
            else:
                raise FramingError(f"unknown frame type 0x{kind:02x}")
        return pos


class ReceiveWindow:
    """Remembers the last sequences received on a link to fill the ACK's ``received`` mask.

    Bit i (i = 0 least significant) is set when sequence N-1-i was received, N being the
    sequence acknowledged (Wireshark's reading of §6.6.2).
    """

    SPAN = 32

    def __init__(self) -> None:
        self._seen: dict[int, None] = {}  # insertion-ordered, bounded set
        self._last = -1
        self._run = 0  # how many of the latest adds were consecutive sequences, _last included

    def add(self, sequence: int) -> None:
        self._run = self._run + 1 if sequence == (self._last + 1) % SEQUENCE_MOD else 1
        self._last = sequence
        self._seen.pop(sequence, None)
        self._seen[sequence] = None
        # TCP delivers in order, so the oldest entries are the ones no mask can reach.
        while len(self._seen) > 2 * self.SPAN:
            del self._seen[next(iter(self._seen))]

    def received_mask(self, ack_sequence: int) -> int:
        mask = 0
        for i in range(self.SPAN):
            if (ack_sequence - 1 - i) % SEQUENCE_MOD in self._seen:
                mask |= 1 << i
        return mask

    def ack_for(self, sequence: int) -> bytes:
        """Record ``sequence`` and return the ACK frame for it."""
        self.add(sequence)
        if self._run > self.SPAN:
            # The SPAN adds before this one were exactly the SPAN sequences before it, and
            # the set keeps the latest 2 * SPAN: every bit of the mask is set. The usual
            # case on a TCP link, and no loop over the window.
            return _ACK.pack(ACK_TYPE, sequence, _FULL_MASK)
        return encode_ack(sequence, self.received_mask(sequence))


def acked_by_mask(ack_sequence: int, received: int) -> list[int]:
    """The earlier sequences an ACK's mask reports as received."""
    return [(ack_sequence - 1 - i) % SEQUENCE_MOD for i in range(32) if received >> i & 1]


class RtoEstimator:
    """RFC 6298 retransmission timeout from RTT samples, clamped to [rto_min, rto_max].

    The RFC's 1 s floor assumes the Internet; in a data centre a 200 ms floor (Linux's
    TCP_RTO_MIN) keeps failure detection quick without firing on scheduler hiccups.
    """

    ALPHA = 1 / 8
    BETA = 1 / 4
    K = 4

    def __init__(
        self,
        initial: float = 1.0,
        rto_min: float = 0.2,
        rto_max: float = 10.0,
        granularity: float = 0.001,
    ) -> None:
        if not 0 < rto_min <= rto_max:
            raise ValueError("need 0 < rto_min <= rto_max")
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.granularity = granularity
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.samples = 0
        self._rto = self._clamp(initial)

    @property
    def rto(self) -> float:
        return self._rto

    def _clamp(self, value: float) -> float:
        return min(self.rto_max, max(self.rto_min, value))

    def sample(self, rtt: float) -> float:
        """Feed one RTT measurement (seconds); returns the new RTO."""
        rtt = max(0.0, rtt)
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - self.BETA) * self.rttvar + self.BETA * abs(self.srtt - rtt)
            self.srtt = (1 - self.ALPHA) * self.srtt + self.ALPHA * rtt
        self.samples += 1
        self._rto = self._clamp(self.srtt + max(self.granularity, self.K * self.rttvar))
        return self._rto

    def backoff(self) -> float:
        """RFC 6298 §5.5: double the RTO after a timeout."""
        self._rto = self._clamp(self._rto * 2)
        return self._rto
