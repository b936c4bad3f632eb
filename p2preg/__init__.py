"""p2preg: a peer-to-peer SIP registrar whose nodes form a Chord-reload (RFC 6940) ring."""

__version__ = "0.1.0"
