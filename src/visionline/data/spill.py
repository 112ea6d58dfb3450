"""An ingest's per-image state, on disk: the source files and the manifest rows.

Ingest keeps nothing per image in memory once the scan ends. The files and the rows go
into a temporary SQLite database (stdlib ``sqlite3``, a small page cache), and every
step that needs them all (the val carve, the clean-ups, the content version, the counts,
the uploads, the manifest) is a query over it; the manifest is written to Parquet in
row groups of ``BATCH`` rows. Memory is then bounded by the cache and the batch size,
not by the number of images; the disk holds about 0.5 KB per image while it runs.

Every ordering here reproduces what the in-memory DataFrame code did: rows sorted by
label and source, ties in scan order (``i``, the file's index in the scan).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from visionline.config import SplitConfig
from visionline.data.manifest import MANIFEST_COLUMNS, SPLITS
from visionline.data.sources import SourceFile
from visionline.errors import IngestError

BATCH = 2048  # rows per insert and per Parquet row group
CACHE_KIB = 1024  # SQLite's page cache (its sorter spills to disk beyond it)
_ORDER = "label, source, i"  # the manifest's order; i breaks ties as a stable sort did
_DECODABLE = MANIFEST_COLUMNS.index("decodable")
_RANK = "CASE split WHEN 'train' THEN 0 WHEN 'val' THEN 1 ELSE 2 END"


def _uniform(sha256_hex: str) -> float:
    # the same number visionline.data.split draws from a hash: 60 bits in [0, 1)
    return int(sha256_hex[:15], 16) / float(16**15)


class Spill:
    """The files and manifest rows of one ingest, in a SQLite file under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "ingest.sqlite"
        self.db = sqlite3.connect(self.path)
        for pragma in (
            "journal_mode = OFF",  # a scratch file: nothing to recover after a crash
            "synchronous = OFF",
            f"cache_size = -{CACHE_KIB}",
            f"temp.cache_size = -{CACHE_KIB}",  # window functions' scratch tables
            "temp_store = FILE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.create_function("vl_uniform", 1, _uniform, deterministic=True)
        self.db.executescript(
            """
            CREATE TABLE files (i INTEGER PRIMARY KEY, rel TEXT, label TEXT, split TEXT,
                                origin INTEGER, loc TEXT);
            CREATE TABLE rows (i INTEGER PRIMARY KEY, key TEXT, source TEXT, label TEXT,
                               sha256 TEXT, bytes INTEGER, width INTEGER, height INTEGER,
                               mode TEXT, format TEXT, decodable INTEGER, error TEXT,
                               split TEXT);
            """
        )
        self.origins: list[object] = []  # one per folder, bucket or CSV: a handful
        self._origin_ids: dict[int, int] = {}
        self.files = 0
        self._kinds: dict[str, str] = {}

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ files
    def add_files(self, files: Iterable[SourceFile]) -> None:
        def rows() -> Iterator[tuple]:
            for f in files:
                oid = self._origin_ids.get(id(f.origin))
                if oid is None:
                    oid = self._origin_ids[id(f.origin)] = len(self.origins)
                    self.origins.append(f.origin)
                yield (self.files, f.rel, f.label, f.split, oid, f.loc)
                self.files += 1

        try:
            self.db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)", rows())
        except UnicodeEncodeError as e:
            bad = e.object if isinstance(e.object, str) else repr(e.object)
            raise IngestError(
                f"{bad!r}: the name is not valid UTF-8 and cannot be recorded; rename it"
            ) from e
        self.db.commit()

    def _file(self, rel: str, label: str, split: str | None, oid: int, loc: str) -> SourceFile:
        return SourceFile(rel, label, split, self.origins[oid], loc)  # type: ignore[arg-type]

    def iter_files(self) -> Iterator[SourceFile]:
        """Every file in scan order, read a page at a time."""
        last = -1
        while True:
            page = self.db.execute(
                "SELECT i, rel, label, split, origin, loc FROM files WHERE i > ? "
                "ORDER BY i LIMIT ?",
                (last, BATCH),
            ).fetchall()
            if not page:
                return
            for i, *rest in page:
                last = i
                yield self._file(*rest)

    # ------------------------------------------------------------------ rows
    def add_rows(self, rows: Iterable[tuple]) -> None:
        """Manifest rows (``MANIFEST_COLUMNS`` order) of the files, in scan order."""
        batch: list[tuple] = []
        for i, row in enumerate(rows):
            batch.append((i, *row))
            if len(batch) >= BATCH:
                self._insert(batch)
                batch = []
        self._insert(batch)

    def _insert(self, batch: list[tuple]) -> None:
        marks = ", ".join("?" * (len(MANIFEST_COLUMNS) + 1))
        self.db.executemany(f"INSERT INTO rows VALUES ({marks})", batch)
        self.db.commit()

    def finish_rows(self) -> None:
        """Index the rows, and note each column's type as the DataFrame inferred it from
        every inspected row (before any clean-up), so the manifest keeps those dtypes."""
        self.db.execute(f"CREATE INDEX rows_order ON rows ({_ORDER})")
        self.db.execute(f"CREATE INDEX rows_key ON rows (key, {_ORDER})")
        self._kinds = {}
        for col in ("mode", "format", "error"):
            self._kinds[col] = "str" if self._any(f"{col} IS NOT NULL") else "null"
        for col in ("width", "height"):
            if not self._any(f"{col} IS NOT NULL"):
                self._kinds[col] = "null"
            else:
                self._kinds[col] = "float" if self._any(f"{col} IS NULL") else "int"

    def _any(self, where: str) -> bool:
        return self.db.execute(f"SELECT EXISTS (SELECT 1 FROM rows WHERE {where})").fetchone()[0]

    def count(self, where: str = "1") -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM rows WHERE {where}").fetchone()[0]

    def carve_val(self, ratios: SplitConfig) -> bool:
        """Move a ``val / (train + val)`` share of train to val by content hash, when the
        source named train and test and no val; True when it did. Identical bytes move
        together, so the carve adds no leakage."""
        if ratios.val <= 0 or not self.count():
            return False
        splits = {s for (s,) in self.db.execute("SELECT DISTINCT split FROM rows")}
        if "val" in splits or not {"train", "test"} <= splits:
            return False
        share = ratios.val / (ratios.train + ratios.val)
        self.db.execute(
            "UPDATE rows SET split = 'val' WHERE split = 'train' AND vl_uniform(sha256) < ?",
            (share,),
        )
        self.db.commit()
        return True

    def drop(self, duplicates: bool, undecodable: bool) -> dict:
        """Leave out what the clean-ups leave out; the record of it, as dataset.json has it."""
        record: dict = {}
        if undecodable:
            cur = self.db.execute(
                f"SELECT source, label, split, error FROM rows WHERE NOT decodable "
                f"ORDER BY {_ORDER}"
            )
            record["undecodable"] = [
                {"source": s, "label": la, "split": sp, "error": e} for s, la, sp, e in cur
            ]
            self.db.execute("DELETE FROM rows WHERE NOT decodable")
        if duplicates:
            # one copy per sha256: the first in (earliest split, label, source) order
            cur = self.db.execute(
                f"""SELECT i, source, label, split, sha256, kept FROM (
                      SELECT i, source, label, split, sha256, {_RANK} AS rank,
                             ROW_NUMBER() OVER w AS n, FIRST_VALUE(source) OVER w AS kept
                      FROM rows WINDOW w AS (PARTITION BY sha256 ORDER BY {_RANK}, {_ORDER}))
                    WHERE n > 1 ORDER BY sha256, rank, {_ORDER}"""
            )
            extra, dups = [], []
            for i, source, label, split, sha, kept in cur:
                extra.append((i,))
                dups.append(
                    {"source": source, "label": label, "split": split, "sha256": sha, "kept": kept}
                )
            record["duplicates"] = dups
            self.db.executemany("DELETE FROM rows WHERE i = ?", extra)
        self.db.commit()
        return record

    def version_lines(self) -> Iterator[tuple[str, str, str, str]]:
        """(source, label, split, sha256) in the order the content version hashes them."""
        yield from self.db.execute(
            "SELECT source, label, split, sha256 FROM rows ORDER BY source, sha256, label, i"
        )

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        cur = self.db.execute(
            "SELECT split, label, COUNT(*) FROM rows GROUP BY split, label ORDER BY split, label"
        )
        for split, label, n in cur:
            out.setdefault(split, {})[label] = n
        return out

    def uploads(self) -> Iterator[tuple[str, str, SourceFile]]:
        """(key, sha256, file) once per distinct key (the first in manifest order, whose
        bytes it is: identical bytes share one object), in manifest order. Index walks
        only, no sort: a sort's buffers would hold the whole result at once."""
        cur = self.db.execute(
            f"""SELECT r.key, r.sha256, f.rel, f.label, f.split, f.origin, f.loc
                FROM rows AS r INDEXED BY rows_order JOIN files AS f USING (i)
                WHERE r.decodable AND NOT EXISTS (
                  SELECT 1 FROM rows AS e INDEXED BY rows_key
                  WHERE e.key = r.key AND e.decodable
                    AND (e.label, e.source, e.i) < (r.label, r.source, r.i))
                ORDER BY {", ".join(f"r.{c.strip()}" for c in _ORDER.split(","))}"""
        )
        for key, sha, *file in cur:
            yield key, sha, self._file(*file)

    def upload_count(self) -> int:
        return self.db.execute("SELECT COUNT(DISTINCT key) FROM rows WHERE decodable").fetchone()[0]

    # ------------------------------------------------------------------ manifest
    def write_manifest(self, path: Path, prefix: str) -> None:
        """The manifest as Parquet at ``path``, in row groups of ``BATCH`` rows, with the
        columns, dtypes and pandas metadata the DataFrame code wrote; keys under
        ``prefix``. Arrays come from the system allocator, which hands freed memory back,
        instead of pyarrow's default pool, which keeps it."""
        # as pandas typed a column assigned from a list: str, all None, or no rows at all
        key_kind = "str" if self._any("key IS NOT NULL") else "null" if self.count() else "float"
        kinds = self._kinds | {"key": key_kind}
        schema = pa.Schema.from_pandas(_template(kinds), preserve_index=False)
        pool = pa.system_memory_pool()
        cols = ", ".join(MANIFEST_COLUMNS)
        cur = self.db.execute(f"SELECT {cols} FROM rows ORDER BY {_ORDER}")
        with pq.ParquetWriter(path, schema, compression="snappy") as writer:
            while batch := cur.fetchmany(BATCH):
                columns = list(zip(*batch, strict=True))
                columns[0] = tuple(None if k is None else f"{prefix}/{k}" for k in columns[0])
                columns[_DECODABLE] = tuple(map(bool, columns[_DECODABLE]))  # SQLite has 0/1
                arrays = [
                    pa.array(values, type=field.type, memory_pool=pool)
                    for values, field in zip(columns, schema, strict=True)
                ]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            if not self.count():
                writer.write_table(schema.empty_table())


def _template(kinds: dict[str, str]) -> pd.DataFrame:
    """An empty manifest with the dtypes the DataFrame code gave each column."""
    dtype = {"str": "str", "null": object, "int": "int64", "float": "float64"}
    data = {
        name: pd.Series(
            [],
            dtype={"bytes": "int64", "decodable": "bool"}.get(name)
            or dtype[kinds.get(name, "str")],
        )
        for name in MANIFEST_COLUMNS
    }
    return pd.DataFrame(data, columns=MANIFEST_COLUMNS)
