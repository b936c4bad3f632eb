"""The SIP front end, sans-I/O: parsing, URIs, registrar rules, transactions.

Nothing here opens a socket or reads a clock; callers pass ``now`` (wall-clock seconds,
because binding expiry times are shared across the ring). See :mod:`p2preg.sip.core`
for the pipeline the node drives.
"""

from p2preg.sip.binding import SIP_BINDING_KIND, Binding, decode_binding, encode_binding
from p2preg.sip.core import (
    Drop,
    LocalRegistrar,
    NeedLookup,
    NeedRegister,
    Respond,
    SipCore,
    Step,
    handle_datagram,
)
from p2preg.sip.message import Headers, SipParseError, SipRequest, SipResponse
from p2preg.sip.parser import FramingError, KeepAlive, StreamFramer, parse_message
from p2preg.sip.registrar import RegisterDecision, RegistrarConfig
from p2preg.sip.responses import Reply, Source
from p2preg.sip.uri import aor_resource_name, canonical_aor, parse_uri, uri_equal

__all__ = [
    "SIP_BINDING_KIND",
    "Binding",
    "Drop",
    "FramingError",
    "Headers",
    "KeepAlive",
    "LocalRegistrar",
    "NeedLookup",
    "NeedRegister",
    "RegisterDecision",
    "RegistrarConfig",
    "Reply",
    "Respond",
    "SipCore",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "Source",
    "Step",
    "StreamFramer",
    "aor_resource_name",
    "canonical_aor",
    "decode_binding",
    "encode_binding",
    "handle_datagram",
    "parse_message",
    "parse_uri",
    "uri_equal",
]
