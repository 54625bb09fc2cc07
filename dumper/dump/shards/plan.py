"""A sharded run's plan (what index 0 tells the others) and a piece's record, and which index
reads which piece: piece `i` of the plan is index `i mod N`'s."""

from __future__ import annotations

import dataclasses

import msgspec

from ...core.errors import ConfigError
from ...core.settings import Settings
from ..reader import Group, Piece


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What index 0 tells the others: the snapshot and every item to read (in order)."""

    attempt: int
    snapshot_id: str
    shards: int
    items: list[list[Piece]]  # a piece, or a group's members (read by one query)
    groups: list[bool]  # whether each item is a group
    # How the parts are written, which every index takes from here (the tables say how they are read).
    format: str
    compression: str
    gzip_level: int


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A piece written: its part's rows, stored bytes and sha256, and JSON nulls (rows from 0)."""

    rows: int
    bytes: int
    sha256: str
    json_nulls: dict[str, list[list[int]]] = {}


def piece_ids(items: list[Piece | Group]) -> dict[tuple[str, int], str]:
    """Each piece's name among the attempt's parts: its item's number (a group's: .member)."""
    ids = {}
    for number, item in enumerate(items):
        if isinstance(item, Group):
            ids.update({(p.relpath, p.index): f"{number}.{k}" for k, p in enumerate(item.members)})
        else:
            ids[(item.relpath, item.index)] = str(number)
    return ids


def reader_of(number: int, shards: int) -> int:
    """The index that reads the plan's item `number`."""
    return number % shards


def share(items: list[Piece | Group], shards: int, index: int) -> list[Piece | Group]:
    return [item for number, item in enumerate(items) if reader_of(number, shards) == index]


def to_plan(attempt: int, snapshot_id: str, settings: Settings, items: list[Piece | Group]) -> Plan:
    return Plan(
        attempt=attempt,
        snapshot_id=snapshot_id,
        shards=settings.shards,
        items=[list(item.members) for item in items],
        groups=[isinstance(item, Group) for item in items],
        format=settings.format,
        compression=settings.compression,
        gzip_level=settings.gzip_level,
    )


def following(settings: Settings, plan: Plan) -> Settings:
    """This process's settings for the plan's attempt: its parts written as index 0 says."""
    if plan.shards != settings.shards:
        raise ConfigError(
            f"--shards {settings.shards}: index 0 planned the run for {plan.shards} processes; every process of "
            "a sharded run needs the same --shards (the Job's completions)"
        )
    return dataclasses.replace(settings, format=plan.format, compression=plan.compression, gzip_level=plan.gzip_level)


def from_plan(plan: Plan) -> list[Piece | Group]:
    return [
        Group(tuple(pieces), pieces[0].lock) if group else pieces[0]
        for pieces, group in zip(plan.items, plan.groups, strict=True)
    ]
