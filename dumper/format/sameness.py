"""Whether a table came back: its rows as a multiset, each row by column name.

A restored table may list its columns in another order (pg_dump's DDL puts an
inheritance child's own columns where it likes) and give its rows back in
another physical order (an index, a bloom filter, a parallel load): neither
is a difference. Any changed, missing or extra value is.

Pure: rows in (JSON texts), a verdict out, in bounded memory. Each row is
reduced to a 128-bit digest of its values in the dump's column order (each
value's exact JSON text, never re-printed, so 40-digit numbers compare as
they are); a table is the count and the sum of its rows' digests, per bucket
of the digest's first byte. Equal sums say the same multiset (a difference
would have to cancel out in 128 bits). For a difference, one more pass keeps
the rows of a few differing buckets (at most EXAMPLE_ROWS of them) to show one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

BUCKETS = 256
MOD = 1 << 128
EXAMPLE_ROWS = 20_000  # rows kept to name a difference (a bucket holds 1/256 of a table)
EXAMPLE_BUCKETS = 4  # differing buckets looked into for an example of each side
SHOWN = 160  # characters of a row shown

_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


class ColumnsDiffer(Exception):
    """A row whose column names are not the dump's."""


def canonical(row: bytes, columns: Sequence[str]) -> bytes:
    """The row's values, in `columns` order, each with its length (ColumnsDiffer if the names differ)."""
    values = _decoder.decode(row)
    if len(values) != len(columns):
        raise ColumnsDiffer(sorted(values))
    try:
        parts = [bytes(values[name]) for name in columns]
    except KeyError:
        raise ColumnsDiffer(sorted(values)) from None
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


@dataclass
class Tally:
    """A table's rows: how many, and the sum of their digests per bucket."""

    rows: int = 0
    sums: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def add(self, row: bytes) -> None:
        digest = hashlib.blake2b(row, digest_size=16).digest()
        bucket = digest[0]
        self.sums[bucket] = (self.sums[bucket] + int.from_bytes(digest, "big")) % MOD
        self.rows += 1


def bucket_of(row: bytes) -> int:
    return hashlib.blake2b(row, digest_size=16).digest()[0]


def tally(rows: Iterable[bytes], columns: Sequence[str]) -> Tally:
    result = Tally()
    for row in rows:
        result.add(canonical(row, columns))
    return result


def _shown(row: bytes, columns: Sequence[str]) -> str:
    """A canonical row as a JSON object again, cut at SHOWN characters."""
    values, at = [], 0
    while at < len(row):
        size = int.from_bytes(row[at : at + 4], "big")
        values.append(row[at + 4 : at + 4 + size])
        at += 4 + size
    text = (
        "{"
        + ",".join(
            f"{msgspec.json.encode(c).decode()}:{v.decode('utf-8', 'replace')}"
            for c, v in zip(columns, values, strict=True)
        )
        + "}"
    )
    return repr(text[:SHOWN] + ("..." if len(text) > SHOWN else ""))


def _kept(rows: Iterable[bytes], columns: Sequence[str], buckets: set[int]) -> Counter[bytes] | None:
    """The canonical rows that fall in `buckets` (None: more than EXAMPLE_ROWS of them)."""
    kept: Counter[bytes] = Counter()
    for row in rows:
        value = canonical(row, columns)
        if bucket_of(value) in buckets:
            kept[value] += 1
            if kept.total() > EXAMPLE_ROWS:
                return None
    return kept


def difference(
    dump: Callable[[], Iterable[bytes]], restored: Callable[[], Iterable[bytes]], columns: Sequence[str]
) -> str | None:
    """None when both hold the same rows (`dump()` and `restored()` iterate each side's row
    texts, again for each call); else what differs, in words, with an example row."""
    try:
        ours = tally(dump(), columns)
    except ColumnsDiffer as exc:
        return f"a row of the dump has the columns {exc.args[0]}, not {list(columns)}"
    try:
        theirs = tally(restored(), columns)
    except ColumnsDiffer as exc:
        return f"the restored table has the columns {exc.args[0]}, the dump {list(columns)}"
    if ours.rows == theirs.rows and ours.sums == theirs.sums:
        return None
    said = f"{ours.rows} rows in the dump, {theirs.rows} restored"
    # A changed row is two differences, in two buckets: a few differing buckets show both sides.
    buckets = {b for b in range(BUCKETS) if ours.sums[b] != theirs.sums[b]}
    buckets = set(sorted(buckets)[:EXAMPLE_BUCKETS])
    kept_ours, kept_theirs = _kept(dump(), columns, buckets), _kept(restored(), columns, buckets)
    if kept_ours is None or kept_theirs is None:
        return f"{said}; the rows differ"
    gone, new = kept_ours - kept_theirs, kept_theirs - kept_ours
    if gone:
        said += f"; a row of the dump that did not come back: {_shown(next(iter(gone)), columns)}"
    if new:
        said += f"; a restored row that is not in the dump: {_shown(next(iter(new)), columns)}"
    return said
