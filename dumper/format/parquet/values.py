"""PostgreSQL's dates and times as numbers (what a Parquet file holds) and back as the text
PostgreSQL reads, for every value PostgreSQL has: BC years, years past 9999, infinities.

Pure arithmetic on integers (proleptic Gregorian, as both PostgreSQL and Arrow count).
"""

from __future__ import annotations

I32 = (1 << 31) - 1
I64 = (1 << 63) - 1
# PostgreSQL counts from 2000-01-01, Arrow from 1970-01-01.
EPOCH_DAYS = 10_957
DAY_US = 86_400_000_000
EPOCH_US = EPOCH_DAYS * DAY_US
# PostgreSQL's infinities (DATEVAL_NOEND/NOBEGIN, DT_NOEND/NOBEGIN) and DuckDB's, which the file holds:
# DuckDB reads +-(2^31-1) days and +-(2^63-1) microseconds as infinity.
PG_DATE_INFINITY, PG_DATE_MINUS_INFINITY = I32, -I32 - 1
PG_TIMESTAMP_INFINITY, PG_TIMESTAMP_MINUS_INFINITY = I64, -I64 - 1
FILE_DATE_INFINITY, FILE_TIMESTAMP_INFINITY = I32, I64
# A timestamp from this many microseconds after PostgreSQL's epoch on does not fit Arrow's int64
# count from 1970 (294247-01-10 04:00:54.775807 AD; PostgreSQL goes on to 294276 AD).
LAST_FITTING_US = I64 - 1 - EPOCH_US


def civil(days: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 as (year, month, day); year 0 is 1 BC (H. Hinnant's civil_from_days)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _year_and_era(year: int) -> tuple[str, str]:
    return (f"{year:04d}", "") if year > 0 else (f"{1 - year:04d}", " BC")


def date_text(days: int) -> str:
    """A file's date (days since 1970, DuckDB's infinities) as PostgreSQL writes it."""
    if days == FILE_DATE_INFINITY:
        return "infinity"
    if days == -FILE_DATE_INFINITY:
        return "-infinity"
    year, month, day = civil(days)
    digits, era = _year_and_era(year)
    return f"{digits}-{month:02d}-{day:02d}{era}"


def time_text(us: int) -> str:
    """Microseconds since midnight (24:00:00 included) as PostgreSQL writes a time."""
    seconds, micro = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    fraction = f".{micro:06d}".rstrip("0") if micro else ""
    return f"{hour:02d}:{minute:02d}:{second:02d}{fraction}"


def timestamp_text(us: int, zone: bool) -> str:
    """Microseconds since 1970 (DuckDB's infinities) as PostgreSQL writes a timestamp (UTC, +00)."""
    if us == FILE_TIMESTAMP_INFINITY:
        return "infinity"
    if us == -FILE_TIMESTAMP_INFINITY:
        return "-infinity"
    return _timestamp(us, zone)


def _timestamp(us: int, zone: bool) -> str:
    days, of_day = divmod(us, DAY_US)
    year, month, day = civil(days)
    digits, era = _year_and_era(year)
    return f"{digits}-{month:02d}-{day:02d} {time_text(of_day)}{'+00' if zone else ''}{era}"


def pg_timestamp_text(pg_us: int, zone: bool) -> str:
    """Microseconds since PostgreSQL's epoch (its infinities) as PostgreSQL writes the timestamp."""
    if pg_us == PG_TIMESTAMP_INFINITY:
        return "infinity"
    if pg_us == PG_TIMESTAMP_MINUS_INFINITY:
        return "-infinity"
    return _timestamp(pg_us + EPOCH_US, zone)  # past the file's range: never read as a sentinel
