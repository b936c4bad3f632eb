"""The record store: one LMDB environment per node, applying RELOAD Store requests atomically.

Named databases:
- ``records``: Resource-ID ‖ Kind-ID ‖ dictionary key → msgpack [storage_time, lifetime,
  expiry_ms, exists, value, signature, role]
- ``generations``: Resource-ID ‖ Kind-ID → uint64 generation counter
- ``expiry``: expiry_ms (uint64 BE) ‖ record key → b"", so sweeping is a scan from the start

Nothing here reads a clock: every call that needs the time takes ``now_ms``.

Threads: reads (fetch, scans, counts, digests) may run on any thread. Writes must come from
one thread at a time (LMDB has a single writer; a second one blocks); ``GroupCommitter`` runs
them all on its own worker thread so the event loop never waits on a disk flush.

Durability: with ``durability="sync"`` (the default) a commit returns only after LMDB has
flushed it to disk, so a record is durable before the store that wrote it returns. With
``durability="async"`` commits are not flushed: a killed process loses nothing (the pages are
in the OS cache), but a power loss or kernel crash may lose the last commits. The database
stays consistent either way; ``flush()`` forces a flush.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import accumulate
from operator import xor
from pathlib import Path
from typing import Any, Final, TypeVar

import lmdb

from overlay.ids import ID_BYTES, MASK, id_from_bytes, id_to_bytes
from overlay.messages import (
    ErrorCode,
    FetchKindResponse,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from storage.errors import StorageFull, StoreError
from storage.record import (
    EXISTS,
    EXPIRY,
    FINE_COUNT,
    KIND,
    LIFETIME,
    PREFIX_BYTES,
    ROLE,
    SIG,
    ST,
    U64,
    VALUE,
    Durability,
    KindLimits,
    Record,
    Role,
    StoreOutcome,
    bucket_bounds,
    bucket_slices,
    decode_signature,
    expiry_key,
    expiry_of,
    key_segments,
    pack_value,
    prefix,
    record_from,
    record_hash,
    unpack_value,
    with_role,
)

T = TypeVar("T")

MIB: Final = 1 << 20
DEFAULT_INITIAL_MAP: Final = 64 * MIB
DEFAULT_MAX_MAP: Final = 16 * 1024 * MIB
# Room kept back for removals (sweeps, tombstones, range deletes): LMDB copies every page a
# write touches, so even a delete needs free pages, and a map filled to the last page by new
# data could never shrink again. New data may fill the map up to max_map_size - reserve.
MAX_RESERVE: Final = 64 * MIB
MIN_RESERVE: Final = 256 * 1024
SCAN_CHUNK: Final = 512  # records read per read transaction by the scanning iterators

# Per-store results inside a batch: (kind, generation) pairs and the number of entries written.
_Applied = tuple[tuple[tuple[int, int], ...], int]


class _ResizeGate:
    """Lets any number of transactions run, except while the map is being resized: LMDB
    requires that no transaction of this process is open then (py-lmdb invalidates them)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False

    @contextmanager
    def txn(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class RecordStore:
    """Records of the overlay's kinds, kept in LMDB under ``directory``.

    ``kinds`` maps every accepted Kind-ID to its limits; any other kind is Unknown_Kind.
    The map starts at ``initial_map_size`` and doubles whenever it is full, up to
    ``max_map_size``; past that a write raises ``StorageFull``.
    """

    def __init__(
        self,
        directory: Path | str,
        kinds: Mapping[int, KindLimits],
        *,
        durability: Durability | str = Durability.SYNC,
        initial_map_size: int = DEFAULT_INITIAL_MAP,
        max_map_size: int = DEFAULT_MAX_MAP,
    ) -> None:
        if initial_map_size <= 0 or max_map_size < initial_map_size:
            raise ValueError(
                f"map sizes must satisfy 0 < initial ({initial_map_size}) <= max ({max_map_size})"
            )
        self.directory = Path(directory)
        self.durability = Durability(durability)
        self.max_map_size = max_map_size
        reserve = min(MAX_RESERVE, max(max_map_size // 8, min(MIN_RESERVE, max_map_size // 4)))
        self.data_limit = max_map_size - reserve  # live bytes past which new data is refused
        self._kinds = dict(kinds)
        self.directory.mkdir(parents=True, exist_ok=True)
        durable = self.durability is Durability.SYNC
        self._env = lmdb.open(
            str(self.directory),
            map_size=initial_map_size,
            max_dbs=3,
            sync=durable,
            metasync=durable,
            readahead=False,  # random access by key; readahead only pollutes the page cache
        )
        self._records = self._env.open_db(b"records")
        self._gens = self._env.open_db(b"generations")
        self._expiry = self._env.open_db(b"expiry")
        # the expiry index key (8 + record key) must fit LMDB's key limit too
        self._max_dict_key = self._env.max_key_size() - PREFIX_BYTES - U64.size
        self._gate = _ResizeGate()
        # Per fine bucket, the XOR of record_hash over the records held (expired ones until
        # swept): what digest() reads. A write transaction collects its changes in _deltas
        # (set while it holds LMDB's write lock) and they are added once it has committed.
        self._sums_lock = threading.Lock()
        self._sums = [0] * FINE_COUNT
        self._deltas: list[tuple[int, int]] = []
        self.digest_scanned = 0  # records read by digest() (the ends of ranges only)
        # Live bytes can reach the data limit only once the map is at least that large: until
        # then a store need not count its pages (four stat calls on every write).
        self._near_full = self.map_size >= self.data_limit
        self._closed = False
        self._rebuild_sums()
        self.committed_seq = 0  # number of commits that have returned (are durable in sync mode)

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        """Force everything committed to disk (what async durability skips on each commit)."""
        self._env.sync(True)

    @property
    def map_size(self) -> int:
        return int(self._env.info()["map_size"])

    def live_bytes(self) -> int:
        """Bytes in pages that hold data now (freed pages, which LMDB reuses, not counted)."""
        with self._read() as txn:
            return self._live_bytes(txn)

    def _live_bytes(self, txn: lmdb.Transaction[bytes]) -> int:
        pages = 0
        psize = 4096
        for db in (None, self._records, self._gens, self._expiry):
            st = txn.stat(db) if db is not None else txn.stat()
            psize = st["psize"]
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return int(pages * psize)

    @property
    def kinds(self) -> Mapping[int, KindLimits]:
        return self._kinds

    # --- transactions ---------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction[bytes]]:
        with self._gate.txn():
            txn = self._env.begin()
            try:
                yield txn
            finally:
                txn.abort()

    def _write(self, work: Callable[[lmdb.Transaction[bytes]], T]) -> tuple[T, int]:
        """Run ``work`` in one write transaction and commit it; a full map is grown and the
        whole transaction retried, so ``work`` must not keep state outside the transaction
        (but ``self._deltas``, which belongs to the transaction)."""
        while True:
            with self._gate.txn():
                txn = self._env.begin(write=True)
                deltas: list[tuple[int, int]] = []
                self._deltas = deltas  # ours alone: we hold LMDB's write lock
                try:
                    result = work(txn)
                    txn.commit()
                except lmdb.MapFullError:
                    txn.abort()
                except BaseException:
                    txn.abort()
                    raise
                else:
                    self.committed_seq += 1
                    if deltas:
                        with self._sums_lock:
                            sums = self._sums
                            for fine, change in deltas:
                                sums[fine] ^= change
                    return result, self.committed_seq
            self._grow()

    def _rebuild_sums(self) -> None:
        sums = [0] * FINE_COUNT
        for key, raw in self._iter_raw([(b"", None)]):
            f = unpack_value(raw)
            sums[_fine_of_key(key)] ^= record_hash(key, f[ST], f[EXISTS])
        with self._sums_lock:
            self._sums = sums

    def _grow(self) -> None:
        with self._gate.exclusive():
            current = self.map_size
            if current >= self.max_map_size:
                raise StorageFull(self.directory, self.max_map_size)
            self._env.set_mapsize(min(current * 2, self.max_map_size))
            self._near_full = self.map_size >= self.data_limit

    # --- stores ---------------------------------------------------------------------------

    def apply_store(self, req: StoreReq, now_ms: int, role: Role) -> StoreOutcome:
        """Apply every entry of ``req`` in one transaction, or none (raises ``StoreError``).

        Original stores (replica_number 0) follow RFC 6940 §7.4.1.1: a non-zero generation
        counter must equal the current one (Generation_Counter_Too_Low), and an entry older
        than the stored one is Data_Too_Old. Replica stores (1, 2) skip the generation check
        and silently keep the newer copy, so re-sending one is harmless. Each kind whose
        entries changed gets a new generation: current + 1, or for a replica store the
        primary's counter from the request if that is higher, so that a promoted replica
        continues the primary's numbering.
        """
        (gens, changed), seq = self._write(lambda txn: self._apply(txn, req, now_ms, role))
        return StoreOutcome(gens, changed, seq)

    def apply_batch(
        self, items: Sequence[tuple[StoreReq, int, Role]]
    ) -> list[StoreOutcome | StoreError]:
        """Apply several stores in ONE commit, each in a nested transaction: a refused store
        rolls back only itself. Results are in ``items`` order."""

        def work(txn: lmdb.Transaction[bytes]) -> list[_Applied | StoreError]:
            results: list[_Applied | StoreError] = []
            for req, now_ms, role in items:
                child = self._env.begin(write=True, parent=txn)
                mark = len(self._deltas)
                try:
                    applied = self._apply(child, req, now_ms, role)
                except StoreError as exc:
                    child.abort()
                    del self._deltas[mark:]  # what the refused store changed is undone
                    results.append(exc)
                except BaseException:
                    child.abort()
                    raise
                else:
                    child.commit()
                    results.append(applied)
            return results

        results, seq = self._write(work)
        return [r if isinstance(r, StoreError) else StoreOutcome(r[0], r[1], seq) for r in results]

    def _apply(
        self, txn: lmdb.Transaction[bytes], req: StoreReq, now_ms: int, role: Role
    ) -> _Applied:
        self._check_kinds(kd.kind for kd in req.kind_data)
        if (
            self._near_full
            and any(sd.exists for kd in req.kind_data for sd in kd.values)
            and self._live_bytes(txn) >= self.data_limit
        ):
            # Removals still go through: they are what frees the space again.
            raise StoreError(
                ErrorCode.DATA_TOO_LARGE,
                f"record store is full ({self.data_limit} bytes of data, the rest of the "
                f"{self.max_map_size}-byte map kept for removals); only removals are accepted "
                "until expired records are swept or the maximum is raised",
            )
        rid = id_to_bytes(req.resource)
        original = req.replica_number == 0
        current: dict[int, int] = {}
        for kd in req.kind_data:
            if kd.kind not in current:
                current[kd.kind] = self._generation(txn, rid + KIND.pack(kd.kind))
        if original:
            stale = [
                kd for kd in req.kind_data if kd.generation_counter not in (0, current[kd.kind])
            ]
            if stale:
                kd = stale[0]
                raise StoreError(
                    ErrorCode.GENERATION_COUNTER_TOO_LOW,
                    f"kind {kd.kind:#x}: generation {kd.generation_counter} is not the current "
                    f"{current[kd.kind]}",
                    generations=tuple(current.items()),
                )
        generations: list[tuple[int, int]] = []
        changed = 0
        for kd in req.kind_data:
            n = self._apply_kind(txn, rid, kd, original, now_ms, role)
            gen = current[kd.kind]
            if n:
                gen = gen + 1 if original else max(gen + 1, kd.generation_counter)
            elif not original and kd.generation_counter > gen:
                gen = kd.generation_counter
            if gen != current[kd.kind]:
                current[kd.kind] = gen
                txn.put(rid + KIND.pack(kd.kind), U64.pack(gen), db=self._gens)
            generations.append((kd.kind, gen))
            changed += n
        return tuple(generations), changed

    def _apply_kind(
        self,
        txn: lmdb.Transaction[bytes],
        rid: bytes,
        kd: StoreKindData,
        original: bool,
        now_ms: int,
        role: Role,
    ) -> int:
        limits = self._kinds[kd.kind]
        max_key = min(limits.max_key_bytes, self._max_dict_key)
        pre = rid + KIND.pack(kd.kind)
        records, expiry = self._records, self._expiry
        written = 0
        added_value = False
        for sd in kd.values:
            if len(sd.value) > limits.max_value_bytes:
                raise StoreError(
                    ErrorCode.DATA_TOO_LARGE,
                    f"kind {kd.kind:#x}: value of {len(sd.value)} bytes exceeds "
                    f"{limits.max_value_bytes}",
                )
            if len(sd.key) > max_key:
                raise StoreError(
                    ErrorCode.DATA_TOO_LARGE,
                    f"kind {kd.kind:#x}: dictionary key of {len(sd.key)} bytes exceeds {max_key}",
                )
            key = pre + sd.key
            old_raw = txn.get(key, db=records)
            change = record_hash(key, sd.storage_time, sd.exists)
            if old_raw is not None:
                old = unpack_value(old_raw)
                if not self._newer(sd, old, original, kd.kind):
                    continue
                txn.delete(expiry_key(old[EXPIRY], key), db=expiry)
                added_value = added_value or (sd.exists and not old[EXISTS])
                change ^= record_hash(key, old[ST], old[EXISTS])
            else:
                added_value = added_value or sd.exists
            self._deltas.append((_fine_of_key(key), change))
            exp = expiry_of(sd.storage_time, sd.lifetime)
            txn.put(key, pack_value(sd, exp, role), db=records)
            txn.put(expiry_key(exp, key), b"", db=expiry)
            written += 1
        if original and added_value:
            live = self._count_live(txn, pre, now_ms)
            if live > limits.max_entries:
                raise StoreError(
                    ErrorCode.DATA_TOO_LARGE,
                    f"kind {kd.kind:#x}: {live} entries exceed the limit of {limits.max_entries}",
                )
        return written

    @staticmethod
    def _newer(sd: StoredData, old: list[Any], original: bool, kind: int) -> bool:
        """Whether ``sd`` replaces the stored ``old``; raises Data_Too_Old for an original store
        that is older (or as old but different: two writers with one timestamp)."""
        old_time: int = old[ST]
        if sd.storage_time > old_time:
            return True
        same = sd.storage_time == old_time and sd.exists == old[EXISTS] and sd.value == old[VALUE]
        if same:
            return False  # a retransmission or re-replication: nothing to do
        if original:
            raise StoreError(
                ErrorCode.DATA_TOO_OLD,
                f"kind {kind:#x} key {sd.key!r}: storage_time {sd.storage_time} is not newer "
                f"than the stored {old_time}",
            )
        if sd.storage_time < old_time:
            return False
        # Equal times, different contents: every copy must settle on the same one.
        return (sd.exists, sd.value) > (bool(old[EXISTS]), old[VALUE])

    def _check_kinds(self, kinds: Iterable[int]) -> None:
        unknown = tuple(dict.fromkeys(k for k in kinds if k not in self._kinds))
        if unknown:
            raise StoreError(
                ErrorCode.UNKNOWN_KIND,
                "unknown kind " + ", ".join(f"{k:#x}" for k in unknown),
                unknown_kinds=unknown,
            )

    def _generation(self, txn: lmdb.Transaction[bytes], pre: bytes) -> int:
        raw = txn.get(pre, db=self._gens)
        return 0 if raw is None else int(U64.unpack(raw)[0])

    def _count_live(self, txn: lmdb.Transaction[bytes], pre: bytes, now_ms: int) -> int:
        n = 0
        cur = txn.cursor(self._records)
        ok = cur.set_range(pre)
        while ok:
            key = cur.key()
            if not key.startswith(pre):
                break
            f = unpack_value(cur.value())
            if f[EXISTS] and f[EXPIRY] > now_ms:
                n += 1
            ok = cur.next()
        return n

    # --- reads ----------------------------------------------------------------------------

    def generation(self, resource: int, kind: int) -> int:
        with self._read() as txn:
            return self._generation(txn, prefix(resource, kind))

    def fetch(
        self, resource: int, specifiers: Iterable[StoredDataSpecifier], now_ms: int
    ) -> tuple[FetchKindResponse, ...]:
        """The existing, unexpired entries asked for (all of a kind when a specifier names no
        keys), with each kind's generation. Keys that are absent, removed or expired are left
        out. The specifier's generation is not used to skip unchanged data."""
        specs = tuple(specifiers)
        self._check_kinds(s.kind for s in specs)
        rid = id_to_bytes(resource)
        out: list[FetchKindResponse] = []
        with self._read() as txn:
            for spec in specs:
                pre = rid + KIND.pack(spec.kind)
                values: list[StoredData] = []
                if spec.keys:
                    for k in spec.keys:
                        raw = txn.get(pre + k, db=self._records)
                        if raw is not None:
                            _add_live(values, k, raw, now_ms)
                else:
                    cur = txn.cursor(self._records)
                    ok = cur.set_range(pre)
                    while ok:
                        key = cur.key()
                        if not key.startswith(pre):
                            break
                        _add_live(values, key[PREFIX_BYTES:], cur.value(), now_ms)
                        ok = cur.next()
                out.append(FetchKindResponse(spec.kind, self._generation(txn, pre), tuple(values)))
        return tuple(out)

    def _iter_raw(
        self, segments: Iterable[tuple[bytes, bytes | None]]
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of the key segments, in order, a chunk per read transaction so
        that a caller may write between items and the map may grow meanwhile."""
        for start, end in segments:
            after: bytes | None = None
            while True:
                chunk: list[tuple[bytes, bytes]] = []
                with self._read() as txn:
                    cur = txn.cursor(self._records)
                    ok = cur.set_range(start if after is None else after)
                    if ok and after is not None and cur.key() == after:
                        ok = cur.next()
                    while ok and len(chunk) < SCAN_CHUNK:
                        key = cur.key()
                        if end is not None and key >= end:
                            ok = False
                            break
                        chunk.append((key, cur.value()))
                        ok = cur.next()
                yield from chunk
                if not ok or not chunk:
                    break
                after = chunk[-1][0]

    def scan_range(
        self,
        lo_exclusive: int,
        hi_inclusive: int,
        now_ms: int,
        role: Role | None = None,
        *,
        include_tombstones: bool = True,
    ) -> Iterator[Record]:
        """Unexpired records of the resources in the ring interval (lo, hi], in ring order
        from lo; (lo, lo] is the whole ring. Tombstones are included unless asked not to:
        a handoff must carry removals too."""
        for key, raw in self._iter_raw(key_segments(lo_exclusive, hi_inclusive)):
            rec = record_from(key, raw)
            if rec.expiry_ms <= now_ms:
                continue
            if role is not None and rec.role is not role:
                continue
            if not include_tombstones and not rec.exists:
                continue
            yield rec

    def records_for(self, resource: int, now_ms: int | None = None) -> list[Record]:
        """Everything held for one resource, tombstones included; expired ones too unless
        ``now_ms`` is given (an operator may want to see what the sweeper has not reached)."""
        rid = id_to_bytes(resource)
        end = None if resource & MASK == MASK else id_to_bytes(resource + 1)
        out = [record_from(k, v) for k, v in self._iter_raw([(rid, end)])]
        if now_ms is not None:
            out = [r for r in out if r.expiry_ms > now_ms]
        return out

    def store_reqs(
        self,
        lo_exclusive: int,
        hi_inclusive: int,
        now_ms: int,
        replica_number: int,
        role: Role | None = None,
        *,
        max_values: int = 256,
    ) -> Iterator[StoreReq]:
        """StoreReqs carrying the unexpired records of (lo, hi] (tombstones included), one
        resource per request, at most ``max_values`` entries each: what a handoff or a
        re-replication sends. Each kind carries this peer's generation, which a replica store
        adopts when higher."""
        pending: list[Record] = []

        def flush() -> StoreReq:
            kinds: dict[int, list[StoredData]] = {}
            for rec in pending:
                kinds.setdefault(rec.kind, []).append(rec.stored_data())
            gens = {k: self.generation(pending[0].resource, k) for k in kinds}
            req = StoreReq(
                pending[0].resource,
                replica_number,
                tuple(
                    StoreKindData(k, 0 if replica_number == 0 else gens[k], tuple(v))
                    for k, v in kinds.items()
                ),
            )
            pending.clear()
            return req

        for rec in self.scan_range(lo_exclusive, hi_inclusive, now_ms, role):
            if pending and (rec.resource != pending[0].resource or len(pending) >= max_values):
                yield flush()
            pending.append(rec)
        if pending:
            yield flush()

    def count(self, role: Role | None = None, *, now_ms: int | None = None) -> int:
        """Records held. Without arguments every stored record (tombstones and not yet swept
        ones too), in constant time; with ``now_ms`` only live values, as a fetch sees them;
        with ``role`` only those held in that role."""
        if role is None and now_ms is None:
            with self._read() as txn:
                return int(txn.stat(self._records)["entries"])
        n = 0
        for _, raw in self._iter_raw([(b"", None)]):
            f = unpack_value(raw)
            if role is not None and f[ROLE] != role:
                continue
            if now_ms is not None and not (f[EXISTS] and f[EXPIRY] > now_ms):
                continue
            n += 1
        return n

    def count_resources(self) -> int:
        n = 0
        with self._read() as txn:
            cur = txn.cursor(self._records)
            ok = cur.first()
            while ok:
                n += 1
                rid = id_from_bytes(cur.key()[:ID_BYTES])
                if rid == MASK:
                    break
                ok = cur.set_range(id_to_bytes(rid + 1))
        return n

    def digest(
        self, lo_exclusive: int, hi_inclusive: int, buckets: int, now_ms: int
    ) -> list[bytes]:
        """A 16-byte sum per bucket of (lo, hi] (``bucket_bounds``): the XOR of record_hash
        over the records held there, expired ones included until swept (two copies that swept
        at different times differ for a round). Read from the running sums of the whole fine
        buckets inside the range; only the two part buckets at its ends are scanned, so it
        costs the same for 100 records as for 100,000."""
        p, slices = bucket_slices(lo_exclusive, hi_inclusive, buckets)
        with self._sums_lock:
            prefix_xor: list[int] = [0, *accumulate(self._sums, xor)]
        total = prefix_xor[-1]

        def run(f0: int, f1: int) -> int:
            """XOR of the sums of fine buckets f0..f1 (inclusive, clockwise)."""
            if f0 <= f1:
                return prefix_xor[f1 + 1] ^ prefix_xor[f0]
            return total ^ prefix_xor[f0] ^ prefix_xor[f1 + 1]

        out: list[bytes] = []
        for a, b in slices:
            x = 0
            j = a
            while j < b:
                if not p.whole(j):
                    start, end = p.start(j), p.end(j)
                    x ^= self._scan_sum((p.lo + start) & MASK, (p.lo + end) & MASK)
                    j += 1
                    continue
                k = j  # a run of whole pieces: consecutive fine buckets
                while k + 1 < b and p.whole(k + 1):
                    k += 1
                x ^= run(p.fine(j), p.fine(k))
                j = k + 1
            out.append(x.to_bytes(16, "big"))
        return out

    def _scan_sum(self, lo_exclusive: int, hi_inclusive: int) -> int:
        x = 0
        for key, raw in self._iter_raw(key_segments(lo_exclusive, hi_inclusive)):
            f = unpack_value(raw)
            x ^= record_hash(key, f[ST], f[EXISTS])
            self.digest_scanned += 1
        return x

    def records_in_bucket(
        self, lo_exclusive: int, hi_inclusive: int, buckets: int, index: int, now_ms: int
    ) -> list[Record]:
        """The unexpired records (tombstones included) of one ``digest`` bucket."""
        return list(self.bucket_page(lo_exclusive, hi_inclusive, buckets, index, now_ms))

    def bucket_page(
        self,
        lo_exclusive: int,
        hi_inclusive: int,
        buckets: int,
        index: int,
        now_ms: int,
        after: bytes | None = None,
    ) -> Iterator[Record]:
        """The unexpired records (tombstones included) of one ``digest`` bucket in ring order,
        read lazily; with ``after`` (the store key of a record, a page cursor) only those that
        come after it. A cursor outside the bucket yields nothing."""
        bounds = bucket_bounds(lo_exclusive, hi_inclusive, buckets)
        if not 0 <= index < buckets:
            raise ValueError(f"bucket index must be 0..{buckets - 1}, got {index}")
        start = 0 if index == 0 else bounds[index - 1]
        if bounds[index] == start:
            return  # an empty slice of a tiny range; (a, a] would mean the whole ring
        a = (lo_exclusive + start) & MASK
        b = (lo_exclusive + bounds[index]) & MASK
        segments = key_segments(a, b)
        if after is not None:
            segments = _resume_after(segments, after)
        for key, raw in self._iter_raw(segments):
            rec = record_from(key, raw)
            if rec.expiry_ms > now_ms:
                yield rec

    # --- maintenance writes ---------------------------------------------------------------

    def set_role_range(self, lo_exclusive: int, hi_inclusive: int, role: Role) -> int:
        """Give every record of (lo, hi] the role ``role``, e.g. promote the replicas of a range
        this peer has become responsible for. Returns how many records changed."""

        def work(txn: lmdb.Transaction[bytes]) -> int:
            changes: list[tuple[bytes, bytes]] = []
            for start, end in key_segments(lo_exclusive, hi_inclusive):
                cur = txn.cursor(self._records)
                ok = cur.set_range(start)
                while ok:
                    key = cur.key()
                    if end is not None and key >= end:
                        break
                    raw = cur.value()
                    if unpack_value(raw)[ROLE] != role:
                        changes.append((key, with_role(raw, role)))
                    ok = cur.next()
            for key, raw in changes:
                txn.put(key, raw, db=self._records)
            return len(changes)

        return self._write(work)[0]

    def set_role_keys(self, store_keys: Iterable[bytes], role: Role) -> int:
        """Set the role of the records with these keys (``Record.store_key``)."""
        keys = tuple(store_keys)

        def work(txn: lmdb.Transaction[bytes]) -> int:
            n = 0
            for key in keys:
                raw = txn.get(key, db=self._records)
                if raw is not None and unpack_value(raw)[ROLE] != role:
                    txn.put(key, with_role(raw, role), db=self._records)
                    n += 1
            return n

        return self._write(work)[0]

    def delete_range(
        self, lo_exclusive: int, hi_inclusive: int, *, role: Role | None = None
    ) -> int:
        """Drop the records of (lo, hi] (only those held as ``role``, if given), e.g. once
        their new owner has them. Without ``role`` the range's generation counters go too.
        Returns how many records were deleted."""
        segments = key_segments(lo_exclusive, hi_inclusive)

        def work(txn: lmdb.Transaction[bytes]) -> int:
            doomed: list[tuple[bytes, int]] = []
            for start, end in segments:
                cur = txn.cursor(self._records)
                ok = cur.set_range(start)
                while ok:
                    key = cur.key()
                    if end is not None and key >= end:
                        break
                    f = unpack_value(cur.value())
                    if role is None or f[ROLE] == role:
                        doomed.append((key, f[EXPIRY]))
                        self._deltas.append((_fine_of_key(key), record_hash(key, f[ST], f[EXISTS])))
                    ok = cur.next()
            for key, exp in doomed:
                txn.delete(key, db=self._records)
                txn.delete(expiry_key(exp, key), db=self._expiry)
            if role is None:
                for start, end in segments:
                    gone: list[bytes] = []
                    cur = txn.cursor(self._gens)
                    ok = cur.set_range(start)
                    while ok:
                        key = cur.key()
                        if end is not None and key >= end:
                            break
                        gone.append(key)
                        ok = cur.next()
                    for key in gone:
                        txn.delete(key, db=self._gens)
            return len(doomed)

        return self._write(work)[0]

    def sweep(self, now_ms: int, limit: int = 1000) -> int:
        """Remove up to ``limit`` expired records (expiry_ms <= now_ms) and their index entries
        in one transaction; a (resource, kind) left empty loses its generation counter too.
        Returns how many were removed; call again while it returns ``limit``.

        On a full map a transaction removing ``limit`` records may not fit in what is free:
        it is split into smaller ones (halved until one fits, down to a single record), each
        committed on its own so that the pages it frees make room for the next."""
        removed = 0
        batch = limit
        while removed < limit:
            step = min(batch, limit - removed)
            try:
                n = self._sweep(now_ms, step)
            except StorageFull:
                if batch <= 1:
                    if removed:
                        return removed
                    raise
                batch //= 2
                continue
            removed += n
            if n < step:
                break  # nothing more is due
        return removed

    def _sweep(self, now_ms: int, limit: int) -> int:
        def work(txn: lmdb.Transaction[bytes]) -> int:
            due: list[bytes] = []
            cur = txn.cursor(self._expiry)
            ok = cur.first()
            while ok and len(due) < limit:
                ikey = cur.key()
                if U64.unpack_from(ikey)[0] > now_ms:
                    break
                due.append(ikey)
                ok = cur.next()
            emptied: set[bytes] = set()
            for ikey in due:
                exp = U64.unpack_from(ikey)[0]
                key = ikey[U64.size :]
                raw = txn.get(key, db=self._records)
                f = unpack_value(raw) if raw is not None else None
                if f is not None and f[EXPIRY] == exp:
                    txn.delete(key, db=self._records)
                    emptied.add(key[:PREFIX_BYTES])
                    self._deltas.append((_fine_of_key(key), record_hash(key, f[ST], f[EXISTS])))
                txn.delete(ikey, db=self._expiry)
            for pre in emptied:
                rc = txn.cursor(self._records)
                if not (rc.set_range(pre) and rc.key().startswith(pre)):
                    txn.delete(pre, db=self._gens)
            return len(due)

        return self._write(work)[0]


def _add_live(values: list[StoredData], key: bytes, raw: bytes, now_ms: int) -> None:
    f = unpack_value(raw)
    if f[EXISTS] and f[EXPIRY] > now_ms:
        values.append(
            StoredData(f[ST], f[LIFETIME], bytes(key), f[VALUE], True, decode_signature(f[SIG]))
        )


def _resume_after(
    segments: list[tuple[bytes, bytes | None]], after: bytes
) -> list[tuple[bytes, bytes | None]]:
    """The part of ``segments`` (key ranges in ring order) that comes after the key ``after``."""
    for i, (start, end) in enumerate(segments):
        if start <= after and (end is None or after < end):
            # after + NUL is the smallest key greater than after
            return [(after + b"\x00", end), *segments[i + 1 :]]
    return []


def _fine_of_key(store_key: bytes) -> int:
    """The fine bucket of a record: the top 16 bits of its Resource-ID (FINE_BITS), which are
    the first two bytes of its store key."""
    return (store_key[0] << 8) | store_key[1]
