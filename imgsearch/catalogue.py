"""The library catalogue: one row per image and each engine's vectors, in SQLite or PostgreSQL.

The database is the source of truth; this object also keeps the image rows in memory, so listing the
gallery or counting never touches the disk. Every change is one transaction (`write()`), which
- bumps a single change counter first, so writers are serialised and each transaction gets the next
  number, in commit order, on SQLite and PostgreSQL alike;
- logs the names it touched in `changes`, tagged with this process's origin;
- applies itself to memory only once committed, under the same lock that `poll()` holds, so memory
  never shows a change the database does not have.

`poll()` reads other processes' changes since the last one seen, and re-reads the current rows of the
names they touched (never the change itself, so applying one twice or late is harmless). Attached
listeners (one per engine: `space.FeatureSpace`) refresh their vectors for the same names in the same
read snapshot.

Tables:
- `images`: name, original or not, size and mtime_ns (the file stamp), sha256 (null until the file is
  first read), `error` (why the file at this stamp could not be read, null when it can), the date the
  photo was taken and its type (both null until first read). Its state for an engine follows:
  unreadable when `error` is set, indexed when the engine's vector has the file's stamp, else pending.
- `vectors`: (name, model_id) → float32 little-endian blob, with the stamp of the file it was computed
  from and a format version. A vector whose stamp differs from its image's is stale.
- `changes`: (seq, name, origin) — the change feed; old entries are pruned.
- `state`: the schema version, the change counter and small named values.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .imaging import FileDetails

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
VECTOR_FORMAT = 1           # float32, little-endian, dim values per row
CHANGE_COUNTER = "change_seq"
CHANGES_FLOOR = "changes_floor"  # every change at or below this seq may have been pruned
KEEP_CHANGES = 100_000      # how many change numbers of history followers can catch up from
PRUNE_EVERY = 1024
NAME_CHUNK = 500            # names per IN (...) clause
# Vector bytes fetched at a time when loading a space. Chunks well under the C allocator's 32 MB mmap limit reuse
# the same memory; bigger ones come fresh from the kernel each time, and faulting that in costs more than the copy.
READ_CHUNK_BYTES = 8 << 20

Stamp = tuple[int, int]

metadata = sa.MetaData()
images = sa.Table(
    "images", metadata,
    sa.Column("name", sa.String(1024), primary_key=True),
    sa.Column("is_original", sa.Boolean, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), index=True),
    sa.Column("error", sa.Text),
    sa.Column("taken_at", sa.String(19)),
    sa.Column("media_type", sa.String(16)),
)
vectors = sa.Table(
    "vectors", metadata,
    sa.Column("name", sa.String(1024), sa.ForeignKey("images.name", ondelete="CASCADE"), primary_key=True),
    sa.Column("model_id", sa.String(255), primary_key=True, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("format", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)
changes = sa.Table(
    "changes", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("name", sa.String(1024), primary_key=True),
    sa.Column("origin", sa.String(32), nullable=False),
)
state = sa.Table(
    "state", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("number", sa.BigInteger),
    sa.Column("text", sa.Text),
)


class CatalogueError(RuntimeError):
    """The database cannot be used: unreachable, or made by a newer version of the app."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    name: str
    is_original: bool
    size: int
    mtime_ns: int
    sha256: str | None = None
    error: str | None = None       # why the file at this stamp could not be read
    taken_at: str | None = None    # "YYYY-MM-DDTHH:MM:SS": EXIF DateTimeOriginal, else the file's local time
    media_type: str | None = None  # the decoded format's extension: jpg, png, gif, bmp, webp

    @property
    def stamp(self) -> Stamp:
        return self.size, self.mtime_ns

    def with_details(self, details: FileDetails) -> "ImageRecord":
        """This row once its file has been read successfully."""
        return dataclasses.replace(self, sha256=details.sha256, taken_at=details.taken_at,
                                   media_type=details.media_type, error=None)


class Listener(Protocol):
    """Something that mirrors part of the catalogue in memory (an engine's vectors)."""

    def refresh(self, conn: sa.Connection, names: Sequence[str], records: dict[str, ImageRecord | None]) -> None: ...

    def forget(self, names: Sequence[str]) -> None: ...

    def regroup(self, records: Sequence[ImageRecord]) -> None: ...

    def reload(self, conn: sa.Connection) -> None: ...


def database_url(setting: str, data_dir: Path) -> str:
    """The SQLAlchemy URL for IMAGE_SEARCH_DATABASE: empty means `catalogue.db` in the data folder."""
    if not setting:
        return f"sqlite:///{Path(data_dir) / 'catalogue.db'}"
    url = make_url(setting)
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if url.drivername in ("sqlite", "postgresql+psycopg"):
        return setting
    raise CatalogueError(f"IMAGE_SEARCH_DATABASE must be a sqlite:/// path or a postgresql:// URL, not {url.drivername}")


def describe_url(url: str) -> str:
    """The URL as the user wrote it, without its password, for messages and the status page."""
    parsed = make_url(url)
    return parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=True)


def _make_engine(url: str) -> sa.Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def configure(dbapi_connection, _record):
            # Python's sqlite3 would begin transactions lazily; `begin` below does it explicitly instead.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the one writer, across processes. synchronous=FULL syncs the
            # log on every commit, so an acknowledged change survives a power cut, not only a crash.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def begin(conn):
            # IMMEDIATE takes the write lock at once, so two writers queue instead of failing on upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class Catalogue:
    """The database, and the image rows mirrored in memory. Thread-safe; one per process and database."""

    def __init__(self, url: str):
        self.url = url
        self.origin = secrets.token_hex(8)
        self._engine = _make_engine(url)
        self.backend = self._engine.dialect.name
        self._lock = threading.RLock()
        self._records: dict[str, ImageRecord] = {}
        self._names_by_hash: dict[str, str] = {}
        self._seen_seq = 0
        self._listeners: list[Listener] = []
        self.version = 0  # bumped on every change applied to memory; cheap cache key

    # ----- opening -----------------------------------------------------------------------------

    def open(self) -> "Catalogue":
        """Create or check the schema, then load every image row."""
        try:
            with self._engine.connect().execution_options(write=True) as conn, conn.begin():
                if self.backend == "postgresql":
                    # Two processes starting at once must not both create the tables.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7316482)"))
                metadata.create_all(conn)
                version = conn.execute(sa.select(state.c.number).where(state.c.key == "schema_version")).scalar()
                if version is None:
                    conn.execute(state.insert(), [{"key": "schema_version", "number": SCHEMA_VERSION},
                                                  {"key": CHANGE_COUNTER, "number": 0},
                                                  {"key": CHANGES_FLOOR, "number": 0}])
                elif version > SCHEMA_VERSION:
                    raise CatalogueError(f"The catalogue at {describe_url(self.url)} was made by a newer version "
                                         f"of the app (schema {version}, this one knows {SCHEMA_VERSION}).")
        except sa.exc.OperationalError as exc:
            raise CatalogueError(f"Cannot open the catalogue at {describe_url(self.url)}: {exc.orig}") from None
        with self._lock, self.reading() as conn:
            self._load_records(conn)
        return self

    def close(self) -> None:
        self._engine.dispose()

    def attach(self, listener: Listener) -> None:
        """Keep `listener` in step with every change to the catalogue, local or from other processes."""
        with self._lock:
            self._listeners.append(listener)

    def detach(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    @contextlib.contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A read transaction that sees one consistent snapshot (loading an engine's vectors, say)."""
        conn = self._engine.connect()
        if self.backend == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            with conn.begin():
                yield conn
        finally:
            conn.close()

    def _load_records(self, conn: sa.Connection) -> None:
        self._seen_seq = _number(conn, CHANGE_COUNTER)
        self._records = {row.name: _record(row) for row in conn.execute(sa.select(images))}
        self._names_by_hash = {r.sha256: r.name for r in self._records.values() if r.sha256}
        self.version += 1

    # ----- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> ImageRecord | None:
        return self._records.get(name)

    def records(self) -> list[ImageRecord]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, name: str) -> bool:
        return name in self._records

    def name_with_hash(self, sha256: str) -> str | None:
        return self._names_by_hash.get(sha256)

    def read_state(self, key: str) -> str | None:
        with self.reading() as conn:
            return conn.execute(sa.select(state.c.text).where(state.c.key == key)).scalar()

    # ----- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator["Write"]:
        """One transaction. Memory (the rows here and every listener's) changes only after it commits."""
        with self._lock:
            with self._engine.connect().execution_options(write=True) as conn, conn.begin():
                seq = conn.execute(state.update().where(state.c.key == CHANGE_COUNTER)
                                   .values(number=state.c.number + 1).returning(state.c.number)).scalar_one()
                change = Write(self, conn, seq)
                yield change
                change.log_changes()
                if seq % PRUNE_EVERY == 0:
                    floor = seq - KEEP_CHANGES
                    conn.execute(changes.delete().where(changes.c.seq <= floor))
                    conn.execute(state.update().where(state.c.key == CHANGES_FLOOR).values(number=floor))
            change.apply()

    def _apply_records(self, updated: dict[str, ImageRecord | None]) -> list[ImageRecord]:
        """Apply rows to memory; returns those whose original flag changed."""
        flipped = []
        for name, record in updated.items():
            old = self._records.pop(name, None)
            if old is not None and record is not None and old.is_original != record.is_original:
                flipped.append(record)
            if old is not None and old.sha256 and self._names_by_hash.get(old.sha256) == name:
                del self._names_by_hash[old.sha256]
            if record is not None:
                self._records[name] = record
                if record.sha256:
                    self._names_by_hash.setdefault(record.sha256, name)
        if updated:
            self.version += 1
        return flipped

    # ----- following other processes -----------------------------------------------------------

    def poll(self) -> int:
        """Apply what other processes changed since the last poll; returns how many names changed."""
        with self._lock, self.reading() as conn:
            latest = _number(conn, CHANGE_COUNTER)
            if latest == self._seen_seq:
                return 0
            if self._seen_seq < _number(conn, CHANGES_FLOOR):
                log.info("Fell behind the catalogue's change feed; reloading everything")
                self._load_records(conn)
                for listener in self._listeners:
                    listener.reload(conn)
                return len(self._records)
            names = list(conn.execute(
                sa.select(changes.c.name).distinct()
                .where(changes.c.seq > self._seen_seq, changes.c.seq <= latest, changes.c.origin != self.origin)
            ).scalars())
            if names:
                found = {record.name: record for record in self._rows_of(conn, names)}
                updated = {name: found.get(name) for name in names}
                # Readers see images before their vectors arrive and after their vectors are gone, never the
                # other way round: a search never returns an image that the gallery does not list.
                self._apply_records({name: record for name, record in updated.items() if record is not None})
                for listener in self._listeners:
                    listener.refresh(conn, names, updated)
                self._apply_records({name: record for name, record in updated.items() if record is None})
            self._seen_seq = latest
            return len(names)

    def _rows_of(self, conn: sa.Connection, names: Sequence[str]) -> Iterator[ImageRecord]:
        for chunk in chunked(names, NAME_CHUNK):
            for row in conn.execute(sa.select(images).where(images.c.name.in_(chunk))):
                yield _record(row)


class Write:
    """The statements of one catalogue transaction, and what memory does once it commits."""

    def __init__(self, catalogue: Catalogue, conn: sa.Connection, seq: int):
        self.catalogue = catalogue
        self.conn = conn
        self.seq = seq
        self._records: dict[str, ImageRecord] = {}   # rows written, for memory
        self._removed: list[str] = []
        self._touched: dict[str, None] = {}           # every name changed, for the change feed
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)

    def current(self, names: Sequence[str]) -> dict[str, ImageRecord]:
        """The rows of `names` as the database has them now, inside this transaction."""
        return {record.name: record for record in self.catalogue._rows_of(self.conn, names)}

    def name_with_hash(self, sha256: str) -> str | None:
        return self.conn.execute(sa.select(images.c.name).where(images.c.sha256 == sha256).limit(1)).scalar()

    def put_records(self, records: Iterable[ImageRecord]) -> None:
        """Insert or replace image rows."""
        records = list(records)
        if not records:
            return
        names = [record.name for record in records]
        existing = set()
        for chunk in chunked(names, NAME_CHUNK):
            existing.update(self.conn.execute(sa.select(images.c.name).where(images.c.name.in_(chunk))).scalars())
        fresh = [_row(r) for r in records if r.name not in existing]
        if fresh:
            self.conn.execute(images.insert(), fresh)
        replaced = [{"key": r.name, **_row(r)} for r in records if r.name in existing]
        if replaced:
            self.conn.execute(images.update().where(images.c.name == sa.bindparam("key")), replaced)
        self._records.update((r.name, r) for r in records)
        self._touched.update(dict.fromkeys(names))

    def remove(self, names: Sequence[str]) -> None:
        """Delete image rows with every engine's vectors (the foreign key cascades)."""
        for chunk in chunked(list(names), NAME_CHUNK):
            self.conn.execute(vectors.delete().where(vectors.c.name.in_(chunk)))
            self.conn.execute(images.delete().where(images.c.name.in_(chunk)))
        self._removed.extend(names)
        self._touched.update(dict.fromkeys(names))

    def put_vectors(self, model_id: str, names: Sequence[str], matrix: np.ndarray, stamps: Sequence[Stamp]) -> None:
        """Store one engine's vectors. `space.FeatureSpace.put` calls this so that memory follows; only code
        that runs before any space is loaded (importing old files, merging catalogues) calls it directly."""
        for chunk in chunked(range(len(names)), NAME_CHUNK):
            chosen = [names[i] for i in chunk]
            self.conn.execute(vectors.delete().where(vectors.c.model_id == model_id, vectors.c.name.in_(chosen)))
            self.conn.execute(vectors.insert(), [
                {"name": names[i], "model_id": model_id, "size": stamps[i][0], "mtime_ns": stamps[i][1],
                 "format": VECTOR_FORMAT, "vector": np.asarray(matrix[i], "<f4").tobytes()} for i in chunk])
        self._touched.update(dict.fromkeys(names))

    def remove_vectors(self, model_id: str, names: Sequence[str]) -> None:
        """Drop one engine's vectors of these images; only `space.FeatureSpace.drop` calls this."""
        for chunk in chunked(list(names), NAME_CHUNK):
            self.conn.execute(vectors.delete().where(vectors.c.model_id == model_id, vectors.c.name.in_(chunk)))
        self._touched.update(dict.fromkeys(names))

    def set_state(self, key: str, text: str) -> None:
        self.conn.execute(state.delete().where(state.c.key == key))
        self.conn.execute(state.insert().values(key=key, text=text))

    def log_changes(self) -> None:
        if self._touched:
            self.conn.execute(changes.insert(), [{"seq": self.seq, "name": name, "origin": self.catalogue.origin}
                                                 for name in self._touched])

    def apply(self) -> None:
        catalogue = self.catalogue
        if self._removed:
            for listener in catalogue._listeners:
                listener.forget(self._removed)
        updated: dict[str, ImageRecord | None] = dict.fromkeys(self._removed)
        updated.update(self._records)
        flipped = catalogue._apply_records(updated)
        if flipped:
            for listener in catalogue._listeners:
                listener.regroup(flipped)
        for action in self._after_commit:
            action()


def read_vectors(conn: sa.Connection, model_id: str, dim: int,
                 names: Sequence[str] | None = None) -> Iterator[tuple[list[str], np.ndarray, list[Stamp]]]:
    """An engine's vectors in chunks of (names, (n, dim) matrix, stamps): all of them, or those of `names`.

    Each matrix is a read-only view of the fetched bytes: callers copy what they keep, and nothing is copied twice.
    """
    query = sa.select(vectors.c.name, vectors.c.size, vectors.c.mtime_ns, vectors.c.format, vectors.c.vector) \
        .where(vectors.c.model_id == model_id)
    batches = [query] if names is None else [query.where(vectors.c.name.in_(chunk))
                                              for chunk in chunked(list(names), NAME_CHUNK)]
    for batch in batches:
        result = conn.execution_options(stream_results=True, yield_per=max(1, READ_CHUNK_BYTES // (4 * dim))) \
            .execute(batch)
        for rows in result.partitions():
            rows = [row for row in rows if row.format == VECTOR_FORMAT and len(row.vector) == 4 * dim]
            if rows:
                matrix = np.frombuffer(b"".join(row.vector for row in rows), "<f4").reshape(len(rows), dim)
                # float32 as stored: no copy on little-endian machines, a byte swap elsewhere.
                yield ([row.name for row in rows], matrix.astype(np.float32, copy=False),
                       [(row.size, row.mtime_ns) for row in rows])


def model_dimensions(conn: sa.Connection) -> dict[str, int]:
    """The engines (model ids) with vectors in the catalogue, and their vectors' dimension."""
    found = {}
    for model_id in conn.execute(sa.select(vectors.c.model_id).distinct()).scalars():
        size = conn.execute(sa.select(sa.func.length(vectors.c.vector))
                            .where(vectors.c.model_id == model_id).limit(1)).scalar()
        found[model_id] = int(size) // 4
    return found


def count_vectors(conn: sa.Connection, model_id: str) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(vectors).where(vectors.c.model_id == model_id)).scalar()


def chunked(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _number(conn: sa.Connection, key: str) -> int:
    return int(conn.execute(sa.select(state.c.number).where(state.c.key == key)).scalar_one())


def _record(row) -> ImageRecord:
    return ImageRecord(row.name, bool(row.is_original), int(row.size), int(row.mtime_ns), row.sha256, row.error,
                       row.taken_at, row.media_type)


def _row(record: ImageRecord) -> dict:
    return dataclasses.asdict(record)
