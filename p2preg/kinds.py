"""The kinds this overlay stores: Kind-IDs, what each accepts, and how operators name them.

Private-use Kind-IDs (RFC 6940 §14.6 reserves 0xF0000001-0xFFFFFFFE for private use), since
RFC 7904's SIP-REGISTRATION kind stores a URI or a destination list rather than the bindings
of our registrar.

- SIP-BINDING: one dictionary entry per contact binding of an AOR (key: the binding key, e.g.
  the Contact URI), value a msgpack binding of a few hundred bytes.
- SIP-CREDENTIAL: digest credentials of an AOR (key: the realm), small.
- DEBUG-KV: one value per name (dictionary key empty) for ``p2preg put/get`` and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from storage import KindLimits

SIP_BINDING: Final = 0xF0000001
SIP_CREDENTIAL: Final = 0xF0000002
DEBUG_KV: Final = 0xF00000FF

DEBUG_KV_KEY: Final = b""  # the debug kind holds a single value per resource
DEBUG_KV_MAX_VALUE: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class KindInfo:
    kind_id: int
    name: str
    limits: KindLimits
    text_values: bool  # whether an operator view may show the value as text


KINDS: Final[tuple[KindInfo, ...]] = (
    # RFC 3261 leaves the number of contacts open; 100 per AOR stops a runaway client early.
    KindInfo(SIP_BINDING, "SIP-BINDING", KindLimits(4096, 100, 1024), False),
    KindInfo(SIP_CREDENTIAL, "SIP-CREDENTIAL", KindLimits(1024, 16, 256), False),
    KindInfo(DEBUG_KV, "DEBUG-KV", KindLimits(DEBUG_KV_MAX_VALUE, 1, 16), True),
)

KIND_LIMITS: Final[dict[int, KindLimits]] = {k.kind_id: k.limits for k in KINDS}
_BY_ID: Final[dict[int, KindInfo]] = {k.kind_id: k for k in KINDS}


def kind_name(kind_id: int) -> str:
    info = _BY_ID.get(kind_id)
    return info.name if info is not None else f"{kind_id:#010x}"


def kind_info(kind_id: int) -> KindInfo | None:
    return _BY_ID.get(kind_id)
