"""exp-probe payloads: split into ≤ 255-byte ProbeInformation entries and merged back."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.ids import MASK
from overlay.messages import ProbeInformation, ProbeInformationType
from overlay.probe import decode_probe_extras, encode_probe_extras


def test_round_trip_with_id_lists_and_addresses() -> None:
    extras: dict[str, object] = {
        "successors": [MASK, 1, 2**100 + 7, 5, 6],
        "predecessors": [9, 8, 7, 6, 5],
        "admin": "127.0.0.1:8080",
        "sip": "[2001:db8::1]:5060",
        "overlay": "127.0.0.1:7000",
        "version": "0.1.0",
        "state": "joined",
    }
    infos = encode_probe_extras(extras)
    assert all(i.type == ProbeInformationType.EXP_PROBE for i in infos)
    assert all(isinstance(i.value, bytes) and len(i.value) <= 255 for i in infos)
    assert len(infos) >= 3  # it does not fit one entry
    assert decode_probe_extras(infos) == extras


def test_long_id_list_is_split_over_entries_in_order() -> None:
    ids = list(range(10**30, 10**30 + 100))
    infos = encode_probe_extras({"fingers": ids})
    assert len(infos) > 5
    assert all(isinstance(i.value, bytes) and len(i.value) <= 255 for i in infos)
    # order of entries on the wire does not matter: parts carry their index
    assert decode_probe_extras(tuple(reversed(infos))) == {"fingers": ids}


def test_empty_list_and_long_text() -> None:
    text = "x" * 1000
    infos = encode_probe_extras({"successors": [], "note": text})
    assert all(isinstance(i.value, bytes) and len(i.value) <= 255 for i in infos)
    assert decode_probe_extras(infos) == {"successors": [], "note": text}


def test_value_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="blob"):
        encode_probe_extras({"blob": b"\x00" * 400})


def test_other_probe_types_and_garbage_are_ignored() -> None:
    good = encode_probe_extras({"state": "joined"})
    infos = (
        ProbeInformation(ProbeInformationType.UPTIME, 5),
        ProbeInformation(ProbeInformationType.EXP_PROBE, b"\xc1\xff"),
        ProbeInformation(ProbeInformationType.EXP_PROBE, msgpack.packb([1, 2])),
        ProbeInformation(
            ProbeInformationType.EXP_PROBE, msgpack.packb({"i": "x", "p": 0, "v": [b"short"]})
        ),
        *good,
    )
    assert decode_probe_extras(infos) == {"state": "joined"}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=255), max_size=8))
def test_decoding_hostile_bytes_never_raises(blobs: list[bytes]) -> None:
    result = decode_probe_extras(
        tuple(ProbeInformation(ProbeInformationType.EXP_PROBE, b) for b in blobs)
    )
    assert isinstance(result, dict)
