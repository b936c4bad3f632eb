"""Why a store was refused (a RELOAD error the caller answers with) or could not be kept."""

from __future__ import annotations

from pathlib import Path

from overlay.codec_bodies import encode_body
from overlay.messages import ErrorCode, StoreAns, StoreKindResponse
from overlay.replication_backend import StoreRejected


class StoreError(StoreRejected):
    """A store refused as a whole (nothing of it was written), with the RELOAD error code.

    For Generation_Counter_Too_Low ``generations`` holds the current (kind, generation) of
    every kind in the request: RFC 6940 §7.4.1.1 returns them as a StoreAns in the error info.
    For Unknown_Kind ``unknown_kinds`` lists the kinds this store does not accept.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        generations: tuple[tuple[int, int], ...] = (),
        unknown_kinds: tuple[int, ...] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.generations = generations
        self.unknown_kinds = unknown_kinds
        # what the ErrorResponse carries (RFC 6940 §7.4.1.1: the counters as a StoreAns)
        self.info = (
            encode_body(self.store_ans())[1]
            if code is ErrorCode.GENERATION_COUNTER_TOO_LOW
            else message.encode("utf-8")[:0xFFFF]
        )

    def store_ans(self) -> StoreAns:
        return StoreAns(tuple(StoreKindResponse(k, g) for k, g in self.generations))


class StorageFull(Exception):
    """The map reached its configured maximum: the store is refused rather than dropped."""

    def __init__(self, directory: Path, limit: int) -> None:
        super().__init__(
            f"record store {directory} is full: its map reached the configured maximum of "
            f"{limit} bytes ({limit / (1 << 20):.0f} MiB); raise the maximum or free space"
        )
        self.directory = directory
        self.limit = limit
