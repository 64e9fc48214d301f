"""sqlite_wal.py: a SQLite database in WAL mode, for ckrun's end-to-end
tests (issue 11: files the job changes come back as they were at the
checkpoint).

SQLite appends each commit to the write-ahead log (db.sqlite-wal, written
through an fd) and records it in the WAL index (db.sqlite-shm, a file it
writes through a shared mapping). A restart cuts the log back to its size
at the checkpoint; the index must come back as it was then too, or it
describes commits the log no longer holds ("disk I/O error", or worse).
The log is never checkpointed into the database while the program runs
(wal_autocheckpoint=0), so the database file itself is written only at the
start and at the end.

Every tick commits a row (and every 7th tick changes an older one), then
reads the whole table back through SQLite: the count and a hash of every
value are printed. At the end: SQLite's own integrity check and a hash of
the full dump.

Prints "tick N count hash" per tick (flushed), then "done ok dumphash";
exits 0. ~20 ms pacing over 200 ticks: about 4 s.
"""

import hashlib
import sqlite3
import sys
import time


def main():
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    db = sqlite3.connect("db.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    for t in range(1, ticks + 1):
        db.execute("BEGIN")
        db.execute("INSERT INTO t (k, v) VALUES (?, ?)", (t, hashlib.sha256(str(t).encode()).hexdigest()))
        if t % 7 == 0:
            db.execute("UPDATE t SET v = v || 'x' WHERE k = ?", (t // 2,))
        db.execute("COMMIT")
        (n,) = db.execute("SELECT COUNT(*) FROM t").fetchone()
        values = "".join(v for (v,) in db.execute("SELECT v FROM t ORDER BY k"))
        print(f"tick {t} {n} {hashlib.sha256(values.encode()).hexdigest()[:16]}", flush=True)
        time.sleep(0.02)
    (ok,) = db.execute("PRAGMA integrity_check").fetchone()
    dump = hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()[:16]
    db.close()
    print(f"done {ok} {dump}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
