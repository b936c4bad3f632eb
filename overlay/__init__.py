"""The Chord-reload overlay (RFC 6940): ids, wire codec, Chord state machine, runtime, simulator."""
