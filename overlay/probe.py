"""Our exp-probe (ProbeInformation type 4) payload: a dict spread over several small entries.

A ProbeInformation value has a one-byte length, so one entry holds at most 255 bytes. A probe
answer carries a peer's successor and predecessor lists (node ids) plus the node's own extras
(admin/SIP/overlay addresses, version, state); that does not fit one entry. Each entry is a
msgpack map:

- ``{"k": {key: value, ...}}`` — a few scalar keys packed together;
- ``{"i": key, "p": part, "n": parts, "v": [16-byte id, ...]}`` — a slice of a list of node ids;
- ``{"s": key, "p": part, "n": parts, "v": "text"}`` — a slice of a long string.

Decoding merges the entries back and never raises on hostile input: entries that do not decode
are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgpack

from overlay.ids import ID_BYTES, MASK
from overlay.messages import ProbeInformation, ProbeInformationType

MAX_VALUE = 255
_IDS_PER_ENTRY = 12  # 12 * (16 + 2) bytes + key and counters stays below 255
_TEXT_CHUNK = 200


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _is_id_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MASK for v in value
    )


def encode_probe_extras(extras: dict[str, object]) -> tuple[ProbeInformation, ...]:
    """Split ``extras`` into exp-probe entries of at most 255 bytes each.

    Lists of ints are taken as node-id lists (16-byte big-endian each). Scalars (str, int,
    float, bool, None) are grouped. A string too long for one entry is split. Any other value
    that does not fit one entry raises ValueError.
    """
    entries: list[bytes] = []
    group: dict[str, object] = {}
    for key in sorted(extras):
        value = extras[key]
        if _is_id_list(value):
            ids = [int(v).to_bytes(ID_BYTES, "big") for v in value]  # type: ignore[attr-defined]
            chunks = [ids[i : i + _IDS_PER_ENTRY] for i in range(0, len(ids), _IDS_PER_ENTRY)]
            chunks = chunks or [[]]
            for part, chunk in enumerate(chunks):
                entries.append(_pack({"i": key, "p": part, "n": len(chunks), "v": chunk}))
            continue
        trial = dict(group)
        trial[key] = value
        if len(_pack({"k": trial})) <= MAX_VALUE:
            group = trial
            continue
        if len(_pack({"k": {key: value}})) <= MAX_VALUE:
            entries.append(_pack({"k": group}))
            group = {key: value}
            continue
        if isinstance(value, str):
            pieces = [value[i : i + _TEXT_CHUNK] for i in range(0, len(value), _TEXT_CHUNK)]
            for part, piece in enumerate(pieces):
                entry = _pack({"s": key, "p": part, "n": len(pieces), "v": piece})
                if len(entry) > MAX_VALUE:  # many multi-byte characters
                    raise ValueError(f"exp-probe value {key!r} cannot be split")
                entries.append(entry)
            continue
        raise ValueError(f"exp-probe value {key!r} does not fit {MAX_VALUE} bytes")
    if group:
        entries.append(_pack({"k": group}))
    return tuple(ProbeInformation(ProbeInformationType.EXP_PROBE, e) for e in entries)


def decode_probe_extras(infos: Iterable[ProbeInformation]) -> dict[str, object]:
    """Merge the exp-probe entries of a ProbeAns back into one dict (id lists as ints)."""
    result: dict[str, object] = {}
    id_parts: dict[str, dict[int, list[int]]] = {}
    text_parts: dict[str, dict[int, str]] = {}
    for info in infos:
        if info.type != ProbeInformationType.EXP_PROBE or not isinstance(info.value, bytes):
            continue
        try:
            entry = msgpack.unpackb(info.value, raw=False, strict_map_key=False)
        except Exception:  # hostile bytes: msgpack raises several types; skip the entry
            continue
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("k"), dict):
            for key, value in entry["k"].items():
                if isinstance(key, str):
                    result[key] = value
        elif isinstance(entry.get("i"), str) and isinstance(entry.get("p"), int):
            raw = entry.get("v")
            if isinstance(raw, list) and all(
                isinstance(b, bytes) and len(b) == ID_BYTES for b in raw
            ):
                ids = [int.from_bytes(b, "big") for b in raw]
                id_parts.setdefault(entry["i"], {})[entry["p"]] = ids
        elif (
            isinstance(entry.get("s"), str)
            and isinstance(entry.get("p"), int)
            and isinstance(entry.get("v"), str)
        ):
            text_parts.setdefault(entry["s"], {})[entry["p"]] = entry["v"]
    for key, parts in id_parts.items():
        merged: list[int] = []
        for part in sorted(parts):
            merged.extend(parts[part])
        result[key] = merged
    for key, pieces in text_parts.items():
        result[key] = "".join(pieces[p] for p in sorted(pieces))
    return result
