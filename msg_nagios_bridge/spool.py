"""The durable spool between sources and sinks: one SQLite database file per spool.

A source put()s a batch of Messages (and, in the same transaction, its read cursor); a sink
take()s the oldest entries, which leases them, then marks each one done, given back or
rejected (dead letter). put() and done() return only after the change is fsynced, so a
message acknowledged to its source survives kill -9 and power loss; leases live in memory,
so after a restart every entry is available again (at-least-once).

On-disk format, limits and the reasons for SQLite are in docs/spool.md.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .files import fsync_dir
from .formats import sequence
from .model import Message
from .wakeup import Wakeup

log = logging.getLogger(__name__)

# A bytes parameter (every message's body) is not among the types the sqlite3 module binds
# without looking for an adapter: it looks up ``__adapt__`` on its protocol type, which formats
# an AttributeError that it then drops (callgrind: PyErr_Format under type_getattro, at every
# body put). With bytes registered, it finds bytes() (the object itself for bytes) at once.
# Global, and harmless to any other use of the module: it is found for bytes only (the
# look-up is by exact type), and a subclass is bound as before.
sqlite3.register_adapter(bytes, bytes)

APPLICATION_ID = 0x4D4E4246  # "MNBF": marks a file as a msg-nagios-bridge spool
SCHEMA_VERSION = 4

# Pragmas applied on every open. synchronous=FULL is what makes a WAL commit durable:
# with NORMAL a commit is only written to the WAL and survives a crash of the process
# but not a power loss.
_PRAGMAS = (
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",  # another process (an operator tool) holds a lock: wait, bounded
    "PRAGMA journal_size_limit=67108864",  # truncate the WAL back to 64 MiB after a burst
    "PRAGMA temp_store=MEMORY",
    # Debian builds SQLite with secure_delete on: every delete zeroes the freed rows and
    # writes the freed pages out again. FAST zeroes only within pages written anyway: a
    # delivered message's bytes may stay in a free page until it is reused (soon, in a queue).
    # 21% fewer bytes written a message on the outbound path: 1,574 against 1,982, the same in
    # each of 3 runs (benchmarks/instructions.py --part outbound --no-callgrind).
    "PRAGMA secure_delete=FAST",   # FAST: SQLite 3.20
)

_MARKS_TABLE = """
CREATE TABLE marks (
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    at   REAL NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
"""

# The inbound memory: per object, the newest result time injected and the tags (fixed-width
# digests, concatenated) of the results injected at that time. One row per object and no
# index on time: a result touches one B-tree page here (version 2 kept the ids seen as marks
# of their own, and both kinds in the time index: four random pages a result).
_NEWEST_TABLE = """
CREATE TABLE newest (
    object TEXT NOT NULL PRIMARY KEY,
    at     REAL NOT NULL,
    tags   TEXT NOT NULL
) WITHOUT ROWID;
"""

_SCHEMA = f"""
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT    NOT NULL UNIQUE,
    destination TEXT    NOT NULL,
    headers     TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    enqueued_at REAL    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE cursors (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
{_MARKS_TABLE}{_NEWEST_TABLE}CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id    INTEGER NOT NULL,
    message_id  TEXT    NOT NULL UNIQUE,
    destination TEXT    NOT NULL,
    headers     TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    enqueued_at REAL    NOT NULL,
    attempts    INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    rejected_at REAL    NOT NULL
);
PRAGMA application_id={APPLICATION_ID};
PRAGMA user_version={SCHEMA_VERSION};
"""

# Version 1 kept the echo guard's objects as one JSON cursor, rewritten whole on every
# change (1.4 s at 500,000 objects); version 2 keeps them as rows of ``marks``. A damaged
# cursor is dropped rather than keep the spool (and the results in it) from opening.
_MIGRATE_FROM_1 = _MARKS_TABLE + """
INSERT OR REPLACE INTO marks
    SELECT 'echo', j.key, j.value
    FROM cursors, json_each(CASE WHEN json_valid(cursors.value) AND json_type(cursors.value) = 'object'
                                 THEN cursors.value ELSE '{}' END) AS j
    WHERE cursors.name = 'echo-guard-objects' AND j.type IN ('integer', 'real');
DELETE FROM cursors WHERE name = 'echo-guard-objects';
PRAGMA user_version=2;
"""

# Version 2 kept the inbound memory as marks 'newest' (object -> time) and 'seen' (one row per
# result id). The newest times move with no tags: a result redelivered with exactly its
# object's newest time is injected once more after the upgrade (rare, and it changes nothing
# in the core); an older one is stale, as before.
_MIGRATE_FROM_2 = _NEWEST_TABLE + """
INSERT OR REPLACE INTO newest (object, at, tags) SELECT key, at, '' FROM marks WHERE kind = 'newest';
DELETE FROM marks WHERE kind IN ('newest', 'seen');
PRAGMA user_version=3;
"""

# Version 3 stored every message's headers as JSON; version 4 stores plain headers as STOMP
# header lines (headers_text) and reads both, so its rows need no change. The number changes
# so that an older daemon, which reads JSON only, refuses the file instead of misreading it.
_MIGRATE_FROM_3 = "PRAGMA user_version=4;"

# Tags kept per object at its newest time, at most (each NEWEST_TAG_WIDTH characters): beyond
# it the older ones of that time are forgotten.
NEWEST_TAGS_MAX = 16
NEWEST_TAG_WIDTH = 16

# In UPDATE SET every column named is the row's old value: ``at`` in the CASE is the old time.
_UPSERT_NEWEST = f"""INSERT INTO newest (object, at, tags) VALUES (?, ?, ?)
ON CONFLICT (object) DO UPDATE SET
    tags = CASE WHEN excluded.at > at THEN excluded.tags
                WHEN excluded.at < at THEN tags
                WHEN length(tags) < {NEWEST_TAGS_MAX * NEWEST_TAG_WIDTH} THEN tags || excluded.tags
                ELSE excluded.tags END,
    at = max(at, excluded.at)"""

_ENTRY_COLUMNS = "id, message_id, destination, headers, body, enqueued_at, attempts"


class SpoolError(Exception):
    """Something is wrong with the spool; the message says what and why."""


class SpoolFull(SpoolError):
    """A limit was reached: nothing of the batch was written. Apply back-pressure and retry."""


class SpoolUnavailable(SpoolError):
    """Disk full, I/O error or corruption: nothing was written. Retry later."""


class SpoolEntry(NamedTuple):
    """A message held by the spool. ``entry_id`` grows with every put: lower is older.
    (A NamedTuple, as Message, for the cost of making one per entry taken.)"""

    entry_id: int
    message: Message
    enqueued_at: float
    attempts: int


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An entry a sink refused, with the reason and the time it was refused.

    ``entry.entry_id`` is 0 for input that never was in the queue (add_dead_letter).
    """

    dead_id: int
    entry: SpoolEntry
    reason: str
    rejected_at: float


@dataclasses.dataclass(frozen=True)
class SpoolStats:
    """Gauges (depth, bytes, oldest_age, leased, dead_letters) and counters since open.

    Counters count messages: ``put`` new ones stored, ``duplicates`` skipped, ``refused_full``
    refused by SpoolFull (a retried batch counts again), ``dead_letters_dropped`` oldest dead
    letters deleted to stay under max_dead_letters; ``errors`` counts SpoolUnavailable raised.
    """

    depth: int
    bytes: int
    oldest_age: Optional[float]
    leased: int
    dead_letters: int
    put: int = 0
    duplicates: int = 0
    done: int = 0
    given_back: int = 0
    rejected: int = 0
    refused_full: int = 0
    dead_letters_dropped: int = 0
    errors: int = 0


Row = Tuple[str, str, str, bytes, int]     # message_id, destination, headers (text), body, size


# One encoder for every message: json.dumps with other than its default arguments builds a new
# one a call (4.4 against 3.4 us for a message's headers). Flat text, so no circular check.
_headers_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True, check_circular=False).encode


def headers_text(headers: Mapping[str, str]) -> str:
    """``headers`` as the spool stores them (docs/spool.md): as STOMP header lines when plain,
    else as a JSON object (``_headers_json``: compact, keys sorted, ASCII).

    Plain: names and values all text, ASCII, without a backslash, line break or NUL, the first
    name not starting with "{". Their lines are ``name:value\n`` each, in the mapping's order,
    with a colon in a name or value escaped as ``\\c``: the header lines of a STOMP 1.2 SEND
    frame, which the publisher sends as they are (broker/connection.py send_frame_stored).
    Nearly every outbound message's headers are plain, and JSON cost a message an encoding at
    put and a conversion into header lines at every send. A JSON text starts with "{" and
    ends with "}"; header lines end with a newline and never start with "{" (headers_dict)."""
    if headers:
        try:
            # Name and value joined by NUL, headers by SOH (as broker/connection.py send_frame):
            # their counts tell that no name or value holds one of its own.
            joined = "\x01".join(map("\x00".join, headers.items()))
        except TypeError:      # a name or value that is not text
            return _headers_json(dict(headers))
        count = len(headers)
        if (joined.isascii() and joined[:1] != "{" and joined.count("\x00") == count
                and joined.count("\x01") == count - 1 and "\\" not in joined and "\n" not in joined
                and "\r" not in joined):
            return joined.replace(":", "\\c").replace("\x00", ":").replace("\x01", "\n") + "\n"
    return _headers_json(dict(headers))


def stored_as_lines(text: str) -> bool:
    """Whether a row's headers ``text`` is header lines (headers_text), not JSON."""
    return text[-1:] == "\n" and text[:1] != "{"


def stored_names(text: str, name: str) -> bool:
    """Whether a row's headers ``text`` may hold a header ``name`` (a name of plain ASCII
    without a colon or quote): exact for header lines, and for JSON never False when it does."""
    if stored_as_lines(text):
        return text.startswith(name + ":") or f"\n{name}:" in text
    return f'"{name}":' in text


def with_header_first(text: str, name: str, value: str) -> str:
    """A row's headers ``text`` with the header ``name: value`` put first, without reading the
    text: O(1) a message. ``name`` and ``value`` are plain (docs/spool.md): e.g. route_seq and
    its stamp (an epoch of [0-9a-zA-Z_-] and a number)."""
    if stored_as_lines(text):
        return name + ":" + value.replace(":", "\\c") + "\n" + text
    return f'{{"{name}":"{value}"' + ("}" if text == "{}" else "," + text[1:])


_scan_json = json.JSONDecoder().scan_once


def headers_dict(text: str) -> Dict[str, str]:
    """The headers a spool row holds (``headers_text``, either form) as a dict. JSON as
    json.loads reads it, without its two whitespace searches a call: the scanner is called
    directly on text that starts and ends with the object (any other text, e.g. with blanks,
    is left to json.loads)."""
    if stored_as_lines(text):
        # No backslash but those of escaped colons (headers_text): each "\\c" is a colon, held
        # as a NUL (which no such text holds) while each line is cut at its first colon.
        escaped = "\\c" in text
        lines = text[:-1].replace("\\c", "\x00") if escaped else text[:-1]
        read = dict(line.partition(":")[::2] for line in lines.split("\n"))
        if escaped:
            read = {name.replace("\x00", ":"): value.replace("\x00", ":") for name, value in read.items()}
        return read
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)          # raises json's own error, or reads what it can
    return value if end == len(text) else json.loads(text)


def encode(message: Message) -> Row:
    """``message`` as the spool stores it; its last item is the bytes it counts for against
    ``max_bytes``. put() takes these rows ready made (``encoded``) from a caller that needed
    the sizes first: its headers' text is then made once, not twice."""
    if not isinstance(message.body, bytes):
        raise TypeError(f"message {message.message_id!r}: body must be bytes")
    # Inbound entries carry no headers: skip the encoder for them. Outbound ones come with
    # their header lines made (routing.build_message).
    headers = message.header_lines or (headers_text(message.headers) if message.headers else "{}")
    size = len(message.body) + len("".join((message.message_id, message.destination, headers))
                                   .encode("utf-8", "surrogatepass"))
    return message.message_id, message.destination, headers, message.body, size


class StoredHeaders(Mapping[str, str]):
    """A taken entry's headers: the row's text (``stored_text``, headers_text's), read into a
    dict only when first looked into. The publisher sends most of them without reading them
    at all (broker/connection.py send_frame_stored)."""

    __slots__ = ("stored_text", "_read")

    def __init__(self, stored_text: str):
        self.stored_text = stored_text
        self._read: Optional[Dict[str, str]] = None

    def _headers(self) -> Dict[str, str]:
        if self._read is None:
            self._read = headers_dict(self.stored_text)
        return self._read

    def __getitem__(self, name: str) -> str:
        return self._headers()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())

    def __repr__(self) -> str:
        return repr(self._headers())


def _entry(row: tuple, stored: bool = False) -> SpoolEntry:
    """The entry of a row; its headers read, or ``stored`` (StoredHeaders) for take()."""
    entry_id, message_id, destination, headers, body, enqueued_at, attempts = row
    if headers == "{}":
        headers = {}
    else:
        headers = StoredHeaders(headers) if stored else headers_dict(headers)
    return SpoolEntry(entry_id, Message(message_id, destination, headers, bytes(body)), enqueued_at, attempts)


# A set of ids goes into SQL as one JSON array, so a statement's text is the same for any
# number of ids. With one "?" per id every batch size was a statement of its own, and
# sqlite3's per-connection cache kept up to 128 of them compiled (each as large as its IN list):
# the site bridge's RSS rose for hours as new batch sizes came by (docs/RELIABILITY.md, Soak).
# It also has no limit on the number of ids, as bound parameters do.
_IN_IDS = "IN (SELECT value FROM json_each(?))"


def _id_array(ids: Iterable[int]) -> str:
    return json.dumps([int(entry_id) for entry_id in ids])


def _id_array_text(ids: Iterable[str]) -> str:
    ids = list(ids)
    # Message ids are nearly always hex digests: nothing in them to escape, and json.dumps
    # escapes a character at a time (callgrind: py_encode_basestring_ascii, at every put).
    joined = "".join(ids)
    if joined.isascii() and joined.isalnum():
        return '["' + '","'.join(ids) + '"]'
    return json.dumps(ids)


_SEQ_OUT = "seq-out:"       # cursors holding the outbound numbering: "<epoch>:<last number>"



class Spool:
    """A durable queue of Messages in the SQLite file ``path`` (created 0600 if missing, in a
    directory created 0700 if missing).

    Safe to share between threads: one SQLite connection guarded by one lock. Only one
    process may open a spool at a time (an flock on ``path + ".lock"``), because leases live
    in this object's memory.
    """

    def __init__(self, path: str, *, max_messages: int = 1_000_000, max_bytes: int = 1 << 30,
                 max_dead_letters: int = 10_000, max_dead_letter_bytes: int = 256 << 20,
                 clock: Callable[[], float] = time.time, exclusive: bool = True) -> None:
        """``exclusive=False`` is for operator tools working on dead letters while the
        daemon runs: no process lock, and no take()/done() (leases live in the daemon)."""
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_dead_letters = max_dead_letters
        self.max_dead_letter_bytes = max_dead_letter_bytes
        self._clock = clock
        self._lock = threading.Lock()
        # take() reads through a connection of its own (_reader) and never waits for
        # self._lock, which writes hold through their commit: see take. The leases below are
        # guarded by _lease_lock, held only for moments (after self._lock where both are).
        self._take_lock = threading.Lock()      # held for a whole take, and by close (first)
        self._lease_lock = threading.Lock()
        self._reader: Optional[sqlite3.Connection] = None
        self._put_event = threading.Event()
        self._on_put: List[Wakeup] = []      # woken when there is something (new) to take
        self._on_room: List[Wakeup] = []     # woken when entries leave (room for more)
        self._data_version: Optional[int] = None   # see notice_outside_changes
        self._leased: set = set()
        # take() reads only rows above the highest id it ever leased (ids only grow:
        # AUTOINCREMENT), plus the given-back ids below it, oldest first.
        self._high = 0
        self._returned: set = set()
        self._sequences: Dict[str, Tuple[str, int]] = {}   # route -> (epoch, last number given)
        self._sequences_loaded = False
        self._counters = dict.fromkeys(
            ("put", "duplicates", "done", "given_back", "rejected", "refused_full",
             "dead_letters_dropped", "errors"), 0)
        self._lock_fd = self._lock_file() if exclusive else os.open(os.devnull, os.O_RDONLY)
        try:
            self._db = self._open(exclusive)
            self._depth, self._bytes = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
            self._dead = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            os.close(self._lock_fd)
            raise SpoolError(f"spool database {self.path} cannot be opened: {exc}") from exc
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ---------------------------------------------------------------------------

    def _lock_file(self) -> int:
        try:
            directory = os.path.dirname(self.path)
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700, exist_ok=True)
                fsync_dir(os.path.dirname(directory))
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool {self.path} cannot be used: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(f"spool {self.path} is in use by another process "
                             f"({self.lock_path} is locked): {exc}") from exc
        return fd

    def _open(self, exclusive: bool) -> sqlite3.Connection:
        if not os.path.exists(self.path):
            # Create the file ourselves so it is 0600 whatever the umask (SQLite gives the
            # -wal and -shm files the same mode), and make its directory entry durable.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            fsync_dir(os.path.dirname(self.path))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=5.0)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode!r})")
            for pragma in _PRAGMAS:
                db.execute(pragma)
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and tables == 0:
                db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
                version = SCHEMA_VERSION
            elif app_id != APPLICATION_ID:
                raise sqlite3.DatabaseError("not a msg-nagios-bridge spool "
                                            f"(application_id {app_id:#x})")
            elif version not in (1, 2, 3, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"spool format version {version} is not "
                                            f"{SCHEMA_VERSION} (nor 1, 2 or 3, which are converted)")
            # Refuse to run on a damaged file rather than lose or mangle entries later.
            problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("integrity check failed: " + "; ".join(problems))
            # Only the daemon converts: operator tools touch dead letters, the same in both
            # versions, and may run beside an old daemon that still writes version 1.
            if version == 1 and exclusive:
                db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_FROM_1 + "COMMIT;")
                version = 2
            if version == 2 and exclusive:
                db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_FROM_2 + "COMMIT;")
                version = 3
            if version == 3 and exclusive:
                db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_FROM_3 + "COMMIT;")
                version = 4
            self.version = version
            if exclusive:
                # The dead letters' sizes without reading their bodies (size comes after the
                # body in a row, so a plain scan would read every body): for the byte limit.
                db.execute("CREATE INDEX IF NOT EXISTS dead_letter_sizes ON dead_letters (id, size)")
                # Marks by time, so forgetting the old ones does not scan them all.
                db.execute("CREATE INDEX IF NOT EXISTS marks_by_time ON marks (kind, at)")
        except BaseException:
            db.close()
            raise
        return db

    # -- transactions ----------------------------------------------------------------------

    def _write(self, what: str, work: Callable[[], None]) -> None:
        """Run ``work`` in one IMMEDIATE transaction; call with self._lock held.

        Any SQLite error rolls back and becomes SpoolUnavailable: nothing was written.
        """
        db = self._usable()
        try:
            db.execute("BEGIN IMMEDIATE")
            work()
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite may already have rolled back after an I/O error
            if isinstance(exc, sqlite3.Error):
                self._counters["errors"] += 1
                raise SpoolUnavailable(f"spool {self.path}: cannot {what}: {exc}") from exc
            raise

    def _read(self, what: str, sql: str, args: tuple = (), db: Optional[sqlite3.Connection] = None) -> list:
        try:
            return (db or self._usable()).execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            self._counters["errors"] += 1
            raise SpoolUnavailable(f"spool {self.path}: cannot {what}: {exc}") from exc

    def _usable(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError(f"spool {self.path} is closed")
        return self._db

    # -- the queue -------------------------------------------------------------------------

    def put(self, messages: Sequence[Message], cursor: Optional[Tuple[str, str]] = None,
            marks: Sequence[Tuple[str, str, float]] = (), *, numbered: bool = False,
            sign: Optional[Callable[[Mapping[str, str], bytes], Optional[Mapping[str, str]]]] = None,
            states: Sequence[Tuple[str, Optional[str]]] = (), newest: Sequence[Tuple[str, float, str]] = (),
            dead_letters: Sequence[Tuple[Message, str]] = (), encoded: Optional[Sequence[Row]] = None) -> int:
        """Store a batch, all or nothing, fsynced when this returns; return how many were new.

        A message_id already in the spool (queued or dead letter) or twice in the batch is a
        duplicate: skipped and counted. ``cursor`` = (name, value) is saved in the same
        transaction, so a source's read position is durable exactly when its lines are;
        so are ``marks`` (kind, key, at), each keeping the later of its old and new time,
        ``states``, more (name, value) cursors (value None: delete it), and ``newest`` (object, at, tag), in order:
        a later time replaces an object's time and tags, the same time adds the tag;
        ``dead_letters`` (message, reason), as add_dead_letter keeps them (a source's refused
        lines with the batch they came in: one fsync, not one each).
        ``encoded``: encode(message) of each of ``messages``, if the caller has them.
        ``numbered``: each new message with a ``route`` header gets the next number of that
        route, with the route's epoch, in ``route_seq`` (formats/sequence.py);
        the counters are cursors named ``seq-out:<route>`` written in the same transaction,
        so a number is given once, whatever crashes, and a duplicate gets none.
        ``sign`` (with ``numbered``): called with each new message's headers, its number
        included, and its body; the headers it returns (a signature) are added. Inside the
        transaction, as the number must be given before the signature is made.
        Raises SpoolFull (limit reached) or SpoolUnavailable (disk full, I/O error); in both
        cases nothing of the batch, cursor included, was written.
        """
        rows = list(encoded) if encoded is not None else [encode(message) for message in messages]
        if len(rows) != len(messages):
            raise ValueError(f"{len(rows)} encoded rows for {len(messages)} messages")
        offered = len(rows)
        now = self._clock()
        if newest:
            self._need_memory()
        with self._lock:
            new = new_bytes = added = dropped = 0
            counters: Dict[str, Tuple[str, int]] = {}

            def work() -> None:
                nonlocal new, new_bytes, rows, added, dropped
                if rows and numbered:
                    rows = self._number(rows, messages, counters, sign)
                    self._db.executemany(
                        "INSERT OR REPLACE INTO cursors (name, value, updated_at) VALUES (?, ?, ?)",
                        [(_SEQ_OUT + route, f"{epoch}:{last}", now) for route, (epoch, last) in counters.items()])
                    # _number kept only the new rows: it looked their ids up in this
                    # transaction, so inserting them needs no look into the dead letters per
                    # row, and SQLite's change count, not a count afterwards, says how many.
                    changes = self._db.total_changes
                    self._db.executemany(
                        "INSERT OR IGNORE INTO messages (message_id, destination, headers, body, size, enqueued_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [(message_id, destination, headers, body, size, now)
                         for message_id, destination, headers, body, size in rows])
                    new, new_bytes = self._db.total_changes - changes, sum(row[4] for row in rows)
                elif rows:
                    # One statement for the batch; the new rows are those with a larger id
                    # than any before (ids grow, and the writer holds the lock: see _write).
                    before = self._db.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
                    self._db.executemany(
                        "INSERT OR IGNORE INTO messages"
                        " (message_id, destination, headers, body, size, enqueued_at)"
                        " SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
                        " (SELECT 1 FROM dead_letters WHERE message_id = ?)",
                        [(message_id, destination, headers, body, size, now, message_id)
                         for message_id, destination, headers, body, size in rows])
                    new, new_bytes = self._db.execute(
                        "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE id > ?", (before,)).fetchone()
                # A batch that adds nothing (all duplicates, or only a cursor) always fits;
                # so does any batch into an empty spool, or a batch bigger than the limits
                # (batch_limits keeps writers' batches well under) would wait for ever.
                if new and self._depth and (self._depth + new > self.max_messages
                                            or self._bytes + new_bytes > self.max_bytes):
                    raise SpoolFull(
                        f"spool {self.path} is full: {self._depth} messages, {self._bytes} bytes"
                        f" held; a batch of {new} new messages, {new_bytes} bytes would pass the"
                        f" limit of {self.max_messages} messages, {self.max_bytes} bytes")
                if cursor is not None:
                    self._db.execute("INSERT OR REPLACE INTO cursors (name, value, updated_at)"
                                     " VALUES (?, ?, ?)", (cursor[0], cursor[1], now))
                if marks:
                    self._db.executemany(
                        "INSERT INTO marks (kind, key, at) VALUES (?, ?, ?) ON CONFLICT (kind, key)"
                        " DO UPDATE SET at = max(at, excluded.at)", marks)
                if newest:
                    self._db.executemany(_UPSERT_NEWEST, newest)
                self._save_states(states, now)
                if dead_letters:
                    added, dropped = self._insert_dead_letters(dead_letters, now)

            try:
                self._write("store a batch", work)
            except SpoolFull:
                self._counters["refused_full"] += new
                raise
            self._sequences.update(counters)     # only once committed
            self._depth += new
            self._bytes += new_bytes
            self._counters["put"] += new
            self._counters["duplicates"] += offered - new
            self._count_dead_letters(added, dropped)
        if new:
            self._something_to_take()
        return new

    def _number(self, rows: list, messages: Sequence[Message], counters: Dict[str, Tuple[str, int]],
                sign=None) -> list:
        """Inside put's transaction: the rows of ``rows`` that are new (their message_id is
        neither in the spool, a dead letter, nor earlier in the batch), with the sequence
        headers spliced into their headers, and signed if ``sign`` says so; ``counters`` gets
        each route's last number."""
        if self._sequences_loaded is False:
            for name, value in self._db.execute("SELECT name, value FROM cursors WHERE name >= ? AND name < ?",
                                                (_SEQ_OUT, _SEQ_OUT[:-1] + ";")):
                epoch, _, last = value.rpartition(":")
                self._sequences[name[len(_SEQ_OUT):]] = (epoch, int(last))
            self._sequences_loaded = True
        ids = _id_array_text(row[0] for row in rows)
        # Known ids get no number: the insert below skips them (a gap if they took one).
        taken = {row[0] for row in self._db.execute(
            f"SELECT message_id FROM messages WHERE message_id {_IN_IDS} UNION ALL"
            f" SELECT message_id FROM dead_letters WHERE message_id {_IN_IDS}", (ids, ids))}
        numbered = []
        for row, message in zip(rows, messages):
            message_id, destination, headers, body, size = row
            route = message.headers.get(sequence.ROUTE_HEADER)
            if message_id in taken:
                continue
            taken.add(message_id)
            stamp = None
            if route and sequence.SEQ_HEADER not in message.headers:
                epoch, last = counters.get(route) or self._sequences.get(route) or (sequence.new_epoch(), 0)
                last += 1
                counters[route] = (epoch, last)
                stamp = sequence.stamp_text(epoch, last)
            signature = None
            if sign is not None:
                signed = dict(message.headers)
                if stamp is not None:
                    signed[sequence.SEQ_HEADER] = stamp
                try:
                    signature = sign(signed, body)
                except Exception as exc:     # noqa: BLE001
                    # Held and retried as any spool failure (the source waits, its state says
                    # why): a message of a signing route is never stored unsigned.
                    raise SpoolUnavailable(f"spool {self.path}: cannot sign message {message_id}:"
                                           f" {type(exc).__name__}: {exc}") from exc
            if signature:
                signed.update(signature)
                text = headers_text(signed)
            elif stamp is not None:
                # Spliced into the stored text rather than encoded again: O(1) a message.
                text = with_header_first(headers, sequence.SEQ_HEADER, stamp)
            else:
                numbered.append(row)
                continue
            numbered.append((message_id, destination, text, body, size + len(text) - len(headers)))
        return numbered

    def sequences(self) -> Dict[str, Tuple[str, int]]:
        """{route: (epoch, last number given)} of the outbound numbering."""
        with self._lock:
            rows = self._read("read the sequence counters", "SELECT name, value FROM cursors"
                              " WHERE name >= ? AND name < ?", (_SEQ_OUT, _SEQ_OUT[:-1] + ";"))
        found = {}
        for name, value in rows:
            epoch, _, last = value.rpartition(":")
            found[name[len(_SEQ_OUT):]] = (epoch, int(last))
        return found

    def _save_states(self, states: Sequence[Tuple[str, Optional[str]]], now: float) -> None:
        """Inside a transaction: save (name, value) cursors; value None deletes the cursor."""
        if states:
            self._db.executemany("INSERT OR REPLACE INTO cursors (name, value, updated_at) VALUES (?, ?, ?)",
                                 [(name, value, now) for name, value in states if value is not None])
            self._db.executemany("DELETE FROM cursors WHERE name = ?",
                                 [(name,) for name, value in states if value is None])

    def cursors(self, prefix: str) -> Dict[str, str]:
        """Every cursor whose name starts with ``prefix`` (the last character of ``prefix``
        must not be U+FFFF), with its value."""
        with self._lock:
            return dict(self._read("read cursors", "SELECT name, value FROM cursors WHERE name >= ? AND name < ?",
                                   (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))))

    def cursor(self, name: str) -> Optional[str]:
        """The value last saved with put(..., cursor=(name, value)), or None."""
        with self._lock:
            rows = self._read("read a cursor", "SELECT value FROM cursors WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    # -- marks: durable sets of keys with a time each (the echo guard's objects) -------------

    def save_marks(self, kind: str, keys: Iterable[str], at: float) -> None:
        """Save ``keys`` of ``kind`` as seen at ``at``, durably, in one transaction."""
        rows = [(kind, key, at) for key in keys]
        if not rows:
            return
        with self._lock:
            self._write("save marks", lambda: self._db.executemany(
                "INSERT OR REPLACE INTO marks (kind, key, at) VALUES (?, ?, ?)", rows))

    def load_marks(self, kind: str, since: float) -> Dict[str, float]:
        """The keys of ``kind`` marked at ``since`` or later, with their times."""
        with self._lock:
            return dict(self._read("read marks", "SELECT key, at FROM marks WHERE kind = ? AND at >= ?",
                                   (kind, since)))

    def each_mark(self, kind: str, since: float, chunk: int = 10_000) -> Iterator[List[Tuple[str, float]]]:
        """load_marks a chunk at a time (lists of (key, time) in key order), so a caller that
        keeps them compactly never holds them all as Python objects."""
        after = None
        while True:
            with self._lock:
                rows = self._read("read marks", "SELECT key, at FROM marks WHERE kind = ? AND at >= ?"
                                  + ("" if after is None else " AND key > ?") + " ORDER BY key LIMIT ?",
                                  (kind, since) + (() if after is None else (after,)) + (chunk,))
            if rows:
                yield rows
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    def find_marks(self, kind: str, keys: Iterable[str]) -> Dict[str, float]:
        """Those of ``keys`` marked as ``kind``, with their times."""
        with self._lock:
            return dict(self._read("read marks", "SELECT key, at FROM marks WHERE kind = ? AND key"
                                   " IN (SELECT value FROM json_each(?))", (kind, json.dumps(list(keys)))))

    def forget_marks_step(self, kind: str, before: float, after: str, scan: int) -> Optional[str]:
        """One bounded step of a sweep in key order: delete the marks of ``kind`` older than
        ``before`` among the next ``scan`` keys after ``after``; return the last key looked at,
        or None when the sweep reached the end. Each step is a short transaction of its own, so
        a big deletion never stalls the spool's other users for long (forget_marks does it all
        at once: about 1 s for 800,000 marks)."""
        return self._sweep_step("marks", "key", "kind = ? AND ", (kind,), before, after, scan)

    def _sweep_step(self, table: str, key: str, where: str, args: tuple, before: float, after: str,
                    scan: int) -> Optional[str]:
        """forget_marks_step on ``table`` (rows with ``key`` and ``at``), those matching
        ``where`` (an SQL prefix ending in AND, its parameters ``args``)."""
        with self._lock:
            rows = self._read(f"find old {table}", f"SELECT {key} FROM {table} WHERE {where}{key} > ?"
                              f" ORDER BY {key} LIMIT 1 OFFSET ?", args + (after, max(scan, 1) - 1))
            end = rows[0][0] if rows else None
            self._write(f"forget old {table}", lambda: self._db.execute(
                f"DELETE FROM {table} WHERE {where}{key} > ? AND at < ?" + ("" if end is None else f" AND {key} <= ?"),
                args + (after, before) + (() if end is None else (end,))))
        return end

    def newest_marks_time(self, kind: str, count: int) -> float:
        """The time of the ``count``-th newest mark of ``kind`` (-inf if there are fewer)."""
        with self._lock:
            rows = self._read("read marks", "SELECT at FROM marks WHERE kind = ? ORDER BY at DESC LIMIT 1 OFFSET ?",
                              (kind, max(count, 1) - 1))
        return rows[0][0] if rows else float("-inf")

    def keep_newest_marks(self, kind: str, count: int) -> None:
        """Delete the marks of ``kind`` older than the ``count`` newest (all of one time stay)."""
        with self._lock:
            self._write("forget old marks", lambda: self._db.execute(
                "DELETE FROM marks WHERE kind = ? AND at < (SELECT at FROM marks WHERE kind = ?"
                " ORDER BY at DESC LIMIT 1 OFFSET ?)", (kind, kind, max(count, 1) - 1)))

    def forget_marks(self, kind: str, before: float) -> None:
        """Delete the keys of ``kind`` marked before ``before``."""
        with self._lock:
            self._write("forget old marks", lambda: self._db.execute(
                "DELETE FROM marks WHERE kind = ? AND at < ?", (kind, before)))

    # -- the inbound memory: per object, its newest time and the tags of that time -----------

    def _need_memory(self) -> None:
        if self.version < 3:
            raise SpoolError(f"spool {self.path} is in format {self.version}, without the inbound memory"
                             " of format 3: start the upgraded daemon once to convert it")

    def find_newest(self, objects: Iterable[str]) -> Dict[str, Tuple[float, str]]:
        """Those of ``objects`` with a newest time: {object: (time, tags)}."""
        self._need_memory()
        with self._lock:
            return {obj: (at, tags) for obj, at, tags in self._read(
                "read the newest times", "SELECT object, at, tags FROM newest WHERE object IN"
                " (SELECT value FROM json_each(?))", (json.dumps(list(objects)),))}

    def forget_newest_step(self, before: float, after: str, scan: int) -> Optional[str]:
        """forget_marks_step for the newest times: delete those older than ``before`` among
        the next ``scan`` objects after ``after``; the last object looked at, or None at the end."""
        self._need_memory()
        return self._sweep_step("newest", "object", "", (), before, after, scan)

    def take(self, limit: int, max_bytes: int = 0) -> List[SpoolEntry]:
        """Lease and return up to ``limit`` entries not already leased, oldest first; with
        ``max_bytes``, only as many as fit in it (their ``size``), but at least one: a reader
        of big messages holds a bounded amount of memory, not ``limit`` of them. Their
        headers are StoredHeaders, read at their first use.

        The rows are read through a connection of the taker's own, without holding the lock
        every write holds through its commit: in WAL mode a reader sees the last commit without
        waiting for the next one, whose fsync would otherwise hold up the thread that takes
        (py-spy at 1,000 results/s: the Nagios writer waited so on the subscriber's commits for
        about a fifth of its time). Takes are serialised among themselves;
        the leases are changed under _lease_lock, never held through a commit."""
        with self._take_lock:
            with self._lease_lock:
                self._usable()
                wanted = sorted(self._returned)[:limit]
                high = self._high
            reader = self._reader_connection()
            budget = max_bytes or None
            rows: list = []
            forget = wanted         # the given-back ids done with (taken, or deleted meanwhile)
            if wanted:
                if budget is not None:
                    ids, budget = self._within(reader, budget, True, f"WHERE id {_IN_IDS} ORDER BY id",
                                               (_id_array(wanted),))
                    if budget == 0 and ids:          # cut short: the rest waits for the next take
                        forget = [entry_id for entry_id in wanted if entry_id <= ids[-1]]
                    wanted = ids
                rows += self._read("take entries", f"SELECT {_ENTRY_COLUMNS} FROM messages"
                                   f" WHERE id {_IN_IDS} ORDER BY id", (_id_array(wanted),), reader)
            fresh: list = []
            if len(rows) < limit and budget != 0:
                if budget is None:
                    fresh = self._read("take entries", f"SELECT {_ENTRY_COLUMNS} FROM messages"
                                       " WHERE id > ? ORDER BY id LIMIT ?", (high, limit - len(rows)), reader)
                else:
                    ids, budget = self._within(reader, budget, not rows,
                                               "WHERE id > ? ORDER BY id LIMIT ?", (high, limit - len(rows)))
                    if ids:
                        fresh = self._read("take entries", f"SELECT {_ENTRY_COLUMNS} FROM messages"
                                           " WHERE id > ? AND id <= ? ORDER BY id", (high, ids[-1]), reader)
                rows += fresh
            entries = [_entry(row, stored=True) for row in rows]
            with self._lease_lock:
                # Only now: a read error must leave them to be taken again, not forgotten.
                self._returned.difference_update(forget)
                if fresh:
                    self._high = fresh[-1][0]
                self._leased.update(entry.entry_id for entry in entries)
        return entries

    def _within(self, reader: sqlite3.Connection, budget: int, first_whatever: bool, where: str,
                args: tuple) -> Tuple[List[int], int]:
        """The ids of the rows ``where`` selects, oldest first, as long as their sizes add up to
        at most ``budget`` (``first_whatever``: the first row whatever its size), and the budget
        left (0 when cut short)."""
        ids: List[int] = []
        left = budget
        for entry_id, size in self._read("take entries", f"SELECT id, size FROM messages {where}", args, reader):
            if size > left and (ids or not first_whatever):
                return ids, 0
            ids.append(entry_id)
            left = max(0, left - size)
        return ids, left

    def _reader_connection(self) -> sqlite3.Connection:
        """take()'s own connection, opened at the first take (operator tools never take)."""
        if self._reader is None:
            try:
                reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                         timeout=5.0)
                for pragma in ("PRAGMA query_only=1", "PRAGMA busy_timeout=5000", "PRAGMA temp_store=MEMORY"):
                    reader.execute(pragma)
            except sqlite3.Error as exc:
                self._counters["errors"] += 1
                raise SpoolUnavailable(f"spool {self.path}: cannot open a connection to take entries: {exc}") from exc
            self._reader = reader
        return self._reader

    def entries_up_to(self, last_id: int, limit: int) -> List[SpoolEntry]:
        """Up to ``limit`` entries with ids up to ``last_id``, oldest first, leased or not
        (nothing is leased by this)."""
        rows = self._read("read entries", f"SELECT {_ENTRY_COLUMNS} FROM messages WHERE id <= ? ORDER BY id LIMIT ?",
                          (last_id, limit))
        return [_entry(row) for row in rows]

    def done(self, entry_ids: Iterable[int]) -> None:
        """Delete entries (delivered), durably. Unknown ids are ignored."""
        ids = list(entry_ids)
        with self._lock:
            deleted = freed = 0

            def work() -> None:
                nonlocal deleted, freed
                id_array = (_id_array(ids),)
                # Counted first: a DELETE that returns the sizes needs SQLite 3.35, and EL9 and
                # Debian 11 ship 3.34.
                deleted, freed = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE id {_IN_IDS}",
                    id_array).fetchone()
                self._db.execute(f"DELETE FROM messages WHERE id {_IN_IDS}", id_array)

            self._write("delete delivered entries", work)
            self._depth -= deleted
            self._bytes -= freed
            self._counters["done"] += deleted
            with self._lease_lock:
                self._leased.difference_update(ids)
        if deleted:
            self._room_freed()

    def give_back(self, entry_ids: Iterable[int], tried: bool = True) -> None:
        """Unlease entries so take() returns them again; each one's attempts grows by 1, unless
        not ``tried`` (e.g. confirmed, and sent again only in case the broker lost them)."""
        ids = list(entry_ids)
        with self._lock:
            try:
                if tried:
                    self._write("give entries back", lambda: self._db.executemany(
                        "UPDATE messages SET attempts = attempts + 1 WHERE id = ?",
                        [(entry_id,) for entry_id in ids]))
            finally:
                # Unleased even when the count cannot be written (disk full): an entry left
                # leased would never be taken again until the bridge restarts.
                with self._lease_lock:
                    back = self._leased.intersection(ids)
                    self._leased.difference_update(back)
                    self._returned.update(back)
                self._counters["given_back"] += len(back)
        self._something_to_take()

    def reject(self, entry_id: int, reason: str) -> None:
        """Move an entry to the dead letters with ``reason`` and the time.

        If that makes more than max_dead_letters, the oldest dead letters are deleted (and
        counted in dead_letters_dropped): they were refused already and logged when refused.
        """
        now = self._clock()
        with self._lock:
            moved = dropped = size = 0

            def work() -> None:
                nonlocal moved, dropped, size
                row = self._db.execute("SELECT size FROM messages WHERE id = ?",
                                       (entry_id,)).fetchone()
                if row is None:
                    return
                size = row[0]
                self._db.execute(
                    "INSERT INTO dead_letters (entry_id, message_id, destination, headers, body,"
                    " size, enqueued_at, attempts, reason, rejected_at)"
                    " SELECT id, message_id, destination, headers, body, size, enqueued_at,"
                    " attempts, ?, ? FROM messages WHERE id = ?", (reason, now, entry_id))
                self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,))
                moved = 1
                dropped = self._trim_dead_letters(1)

            self._write("move an entry to the dead letters", work)
            with self._lease_lock:
                self._leased.discard(entry_id)
            self._depth -= moved
            self._bytes -= size
            self._dead += moved - dropped
            self._counters["rejected"] += moved
            self._counters["dead_letters_dropped"] += dropped
        if moved:
            self._room_freed()
            # The caller logs (rate-limited); one line per refusal would flood the log.
            log.debug("spool %s: message rejected to the dead letters: %s", self.path, reason)
        if dropped:
            log.warning("spool %s: %d oldest dead letters deleted (limits %d dead letters, %d bytes)",
                        self.path, dropped, self.max_dead_letters, self.max_dead_letter_bytes)

    def add_dead_letter(self, message: Message, reason: str, states: Sequence[Tuple[str, Optional[str]]] = ()) -> bool:
        """Keep input that never became a queue entry (a bad line, a refused message) as a
        dead letter with ``reason``; return False if its message_id is already one.
        ``states``: (name, value) cursors saved (value None: deleted) in the same transaction."""
        now = self._clock()
        with self._lock:
            added = dropped = 0

            def work() -> None:
                nonlocal added, dropped
                added, dropped = self._insert_dead_letters([(message, reason)], now)
                self._save_states(states, now)

            self._write("keep a dead letter", work)
            self._count_dead_letters(added, dropped)
        return bool(added)

    def _insert_dead_letters(self, dead_letters: Sequence[Tuple[Message, str]], now: float) -> Tuple[int, int]:
        """Inside a transaction: keep (message, reason) as dead letters, each message_id once,
        and trim to the limits; (added, dropped)."""
        added = self._db.executemany(
            "INSERT OR IGNORE INTO dead_letters (entry_id, message_id, destination,"
            " headers, body, size, enqueued_at, attempts, reason, rejected_at)"
            " VALUES (0, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            [(*encode(message), now, reason, now) for message, reason in dead_letters]).rowcount
        return added, self._trim_dead_letters(added)

    def _count_dead_letters(self, added: int, dropped: int) -> None:
        """Once committed (under self._lock)."""
        self._dead += added - dropped
        self._counters["rejected"] += added
        self._counters["dead_letters_dropped"] += dropped
        if dropped:
            log.warning("spool %s: %d oldest dead letters deleted (limits %d dead letters, %d bytes)",
                        self.path, dropped, self.max_dead_letters, self.max_dead_letter_bytes)

    def _trim_dead_letters(self, added: int) -> int:
        """Inside a transaction that added dead letters: delete the oldest beyond the limits
        (max_dead_letters, max_dead_letter_bytes), so the newest refusals are kept."""
        dropped = 0
        excess = self._dead + added - self.max_dead_letters
        if excess > 0:
            dropped = self._db.execute("DELETE FROM dead_letters WHERE id IN"
                                       " (SELECT id FROM dead_letters ORDER BY id LIMIT ?)",
                                       (excess,)).rowcount
        # Every dead letter older than the newest one that brings the newest ones, added
        # up, past the byte limit; never the newest itself: one larger than the whole limit
        # (a 4 MiB perfdata record, the limit 1 MiB) is kept alone, not deleted as it comes
        # (review 2026-12-06).
        return dropped + self._db.execute(
            "DELETE FROM dead_letters WHERE id <= (SELECT id FROM (SELECT id, sum(size) OVER"
            " (ORDER BY id DESC) AS newer FROM dead_letters)"
            " WHERE newer > ? AND id < (SELECT max(id) FROM dead_letters) ORDER BY id DESC LIMIT 1)",
            (self.max_dead_letter_bytes,)).rowcount

    # -- dead letters (for operators) ------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> List[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first."""
        with self._lock:
            rows = self._read("read the dead letters",
                              "SELECT id, entry_id, message_id, destination, headers, body,"
                              " enqueued_at, attempts, reason, rejected_at FROM dead_letters"
                              " ORDER BY id LIMIT ?", (limit,))
        return [DeadLetter(row[0], _entry(row[1:8]), row[8], row[9]) for row in rows]

    def dead_letter(self, dead_id: int) -> Optional[DeadLetter]:
        """The dead letter ``dead_id``, or None."""
        with self._lock:
            rows = self._read("read a dead letter",
                              "SELECT id, entry_id, message_id, destination, headers, body,"
                              " enqueued_at, attempts, reason, rejected_at FROM dead_letters"
                              " WHERE id = ?", (dead_id,))
        return DeadLetter(rows[0][0], _entry(rows[0][1:8]), rows[0][8], rows[0][9]) if rows else None

    def requeue_dead_letter(self, dead_id: int) -> Optional[int]:
        """Put a dead letter back in the queue (attempts 0, enqueued now); return its new id.

        Returns None if there is no such dead letter. Respects the limits (SpoolFull).
        """
        now = self._clock()
        with self._lock:
            new_id = size = None

            def work() -> None:
                nonlocal new_id, size
                row = self._db.execute("SELECT size FROM dead_letters WHERE id = ?",
                                       (dead_id,)).fetchone()
                if row is None:
                    return
                size = row[0]
                if self._depth + 1 > self.max_messages or self._bytes + size > self.max_bytes:
                    raise SpoolFull(f"spool {self.path} is full: cannot requeue dead letter "
                                    f"{dead_id}")
                new_id = self._db.execute(
                    "INSERT INTO messages (message_id, destination, headers, body, size,"
                    " enqueued_at) SELECT message_id, destination, headers, body, size, ?"
                    " FROM dead_letters WHERE id = ?", (now, dead_id)).lastrowid
                self._db.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))

            self._write("requeue a dead letter", work)
            if new_id is not None:
                self._depth += 1
                self._bytes += size
                self._dead -= 1
        if new_id is not None:
            self._something_to_take()
        return new_id

    def purge_dead_letters(self, dead_ids: Optional[Iterable[int]] = None, *,
                           before: Optional[float] = None) -> int:
        """Delete the given dead letters, or those rejected before ``before``, or all of them
        (no arguments); return how many were deleted."""
        where, args = "1", []
        if dead_ids is not None:
            where = f"id {_IN_IDS}"
            args.append(_id_array(dead_ids))
        if before is not None:
            where += " AND rejected_at < ?"
            args.append(before)
        with self._lock:
            deleted = 0

            def work() -> None:
                nonlocal deleted
                deleted = self._db.execute(f"DELETE FROM dead_letters WHERE {where}",
                                           args).rowcount

            self._write("purge dead letters", work)
            self._dead -= deleted
        return deleted

    # -- waiting, stats, closing -----------------------------------------------------------

    def recount(self) -> None:
        """Re-read depth, bytes and dead letters from disk (an operator tool may have changed them)."""
        with self._lock:
            depth, size = self._read("count entries", "SELECT count(*), coalesce(sum(size), 0) FROM messages")[0]
            dead = self._read("count dead letters", "SELECT count(*) FROM dead_letters")[0][0]
            self._depth, self._bytes, self._dead = depth, size, dead
        self._something_to_take()
        self._room_freed()

    def notice_outside_changes(self) -> bool:
        """If another process (an operator tool: requeue, purge) committed to this spool since
        the last call, re-count and wake the workers; True if so. Cheap: SQLite's data_version
        changes only for commits made on other connections."""
        with self._lock:
            version = self._read("read the data version", "PRAGMA data_version")[0][0]
            changed = self._data_version is not None and version != self._data_version
            self._data_version = version
        if changed:
            self.recount()
        return changed

    def batch_limits(self) -> Tuple[int, int]:
        """(messages, bytes): how big a writer's batches may be, a quarter of each limit (at
        least one message), so that a batch always fits an empty spool and a backlog read in
        one go (after a long wait) is stored in parts."""
        return max(1, self.max_messages // 4), max(1, self.max_bytes // 4)

    def wake_on_put(self, wakeup: Wakeup) -> None:
        """Set ``wakeup`` whenever there is something new to take (put, given back, requeued)
        or the spool closes."""
        self._on_put.append(wakeup)

    def wake_on_room(self, wakeup: Wakeup) -> None:
        """Set ``wakeup`` whenever entries leave the queue (delivered, rejected) or the spool
        closes: a writer that paused on a full spool can try again."""
        self._on_room.append(wakeup)

    def _something_to_take(self) -> None:
        self._put_event.set()
        for wakeup in self._on_put:
            wakeup.set()

    def _room_freed(self) -> None:
        for wakeup in self._on_room:
            wakeup.set()

    def wait(self, timeout: float) -> bool:
        """Block until something is put (or given back, requeued; or the spool is closed) or
        ``timeout`` seconds pass; return False on timeout.

        Call take() after it: the event is cleared here and set only after a commit, so a put
        is never missed between wait() and take().
        """
        woken = self._put_event.wait(timeout)
        self._put_event.clear()
        return woken

    def stats(self) -> SpoolStats:
        with self._lock:
            oldest = self._read("read statistics",
                                "SELECT enqueued_at FROM messages ORDER BY id LIMIT 1")
            return SpoolStats(
                depth=self._depth, bytes=self._bytes,
                oldest_age=max(0.0, self._clock() - oldest[0][0]) if oldest else None,
                leased=len(self._leased), dead_letters=self._dead, **self._counters)

    def close(self) -> None:
        """Close the database and release the lock file. Leases are forgotten."""
        with self._take_lock, self._lock, self._lease_lock:
            if self._db is None:
                return
            try:
                if self._reader is not None:
                    self._reader.close()
                self._db.close()
            finally:
                self._reader = None
                self._db = None
                self._leased.clear()
                self._returned.clear()
                self._high = 0
                os.close(self._lock_fd)
        self._something_to_take()  # wake waiting workers so they notice
        self._room_freed()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
