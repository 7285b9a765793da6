"""The table of log formats: one row per preset, read by `trainer.readers` and the CLI.

A preset says how a public log maps onto canonical events (edge_runtime.events):
which column holds what, how the time is written, which event values mean what.
`csv` (CUSTOM_FORMAT) is the custom preset built from `--map` and `--events`.

The CLI's help is generated from this table: ``--format`` lists PRESETS (then ``csv``),
``ubp-edge data formats`` shows each preset's ``description``, ``--time-unit`` lists TimeUnit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from edge_runtime.errors import ConfigError
from edge_runtime.events import CANONICAL_FIELDS, EVENT_TYPES, REQUIRED_FIELDS


class TimeUnit(StrEnum):
    SECONDS = "s"
    MILLISECONDS = "ms"
    DATETIME = "datetime"  # text such as "2019-10-01 00:00:00 UTC" or ISO 8601
    AUTO = "auto"  # numeric: ms when more values fall in 2000..2100 as ms than as s; text: datetime


def delimiter_problem(delimiter: object) -> str:
    """What is wrong with a CSV field separator, or "" when it will do.

    pyarrow and the csv module take one ASCII character; a quote would be read as quoting
    and a line end as the end of the record. A typed backslash-t is the common slip for tab.

    Args:
        delimiter: the separator as given (``--delimiter``, or a preset's).

    Returns:
        The problem, to follow the value in a message (``'ab' is not one character; ...``),
        or "" for a usable separator.
    """
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        hint = " (for a tab, pass a real tab: $'\\t' in bash)" if delimiter == "\\t" else ""
        return f"is not one character; pass one such as ',' ';' '|' or a tab{hint}"
    if not delimiter.isascii() or (not delimiter.isprintable() and delimiter != "\t"):
        return "is not a printable ASCII character (or a tab)"
    if delimiter in "\"\r\n":
        return "would end or quote fields, not separate them"
    return ""


def check_delimiter(delimiter: object) -> None:
    """Refuse a ``--delimiter`` the CSV reader cannot use.

    Raises:
        ConfigError: naming ``--delimiter`` and the value (see `delimiter_problem`).
    """
    problem = delimiter_problem(delimiter)
    if problem:
        raise ConfigError(f"--delimiter: {delimiter!r} {problem}")


@dataclass(frozen=True)
class FormatPreset:
    """How one log format maps onto canonical events.

    Attributes:
        name: the value of ``--format``.
        columns: canonical field -> source column name.
        events: source event value -> canonical event type.
        time_unit: how the source time column is written.
        header: whether the file has a header row (CSV only); if not, ``names`` names its columns.
        names: column names for a header-less CSV.
        delimiter: CSV field separator.
        utc_offset_hours: the shop's clock, used for time-of-day features.
        has_user_ids: whether ``user`` is a real person id (enables user-history context).
        missing_user: a value that means "no user id" (the session id is used instead).
        description: one line for ``ubp-edge data formats`` (what the file looks like).
    """

    name: str
    columns: dict[str, str]
    events: dict[str, str]
    time_unit: TimeUnit = TimeUnit.AUTO
    header: bool = True
    names: tuple[str, ...] = ()
    delimiter: str = ","
    utc_offset_hours: float = 0.0
    has_user_ids: bool = True
    missing_user: str | None = None
    description: str = ""
    # Session start + offset formats (DIGINETICA): the time column is ms since the
    # session start and this column holds the session's date.
    date_column: str | None = None
    # Logs of one event type have no event column (DIGINETICA's views file).
    constant_event: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.columns) - set(CANONICAL_FIELDS)
        if unknown:
            raise ConfigError(f"format {self.name!r}: unknown canonical fields {sorted(unknown)}; "
                              f"allowed {list(CANONICAL_FIELDS)}")
        missing = [f for f in REQUIRED_FIELDS if f not in self.columns
                   and not (f == "user" and "session" in self.columns)
                   and not (f == "event" and self.constant_event)]
        if missing:
            raise ConfigError(f"format {self.name!r}: no column mapped to {missing}; "
                              f"required {list(REQUIRED_FIELDS)} (user may be replaced by session)")
        bad_events = sorted(set(self.events.values()) - set(EVENT_TYPES)
                            - ({None} if self.constant_event is None else set()))
        if self.constant_event is not None and self.constant_event not in EVENT_TYPES:
            bad_events.append(self.constant_event)
        if bad_events:
            raise ConfigError(f"format {self.name!r}: event values map to {bad_events}; "
                              f"allowed {list(EVENT_TYPES)}")
        problem = delimiter_problem(self.delimiter)
        if problem:
            raise ConfigError(f"format {self.name!r}: delimiter {self.delimiter!r} {problem}")


CANONICAL_EVENTS = {name: name for name in EVENT_TYPES}

PRESETS: dict[str, FormatPreset] = {p.name: p for p in [
    FormatPreset(
        name="taobao",
        description="Alibaba Taobao UserBehavior: user_id,item_id,category_id,behavior_type,timestamp "
                    "(no header)",
        header=False,
        names=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
        columns={"user": "user_id", "item": "item_id", "category": "category_id",
                 "event": "behavior_type", "ts": "timestamp"},
        events={"pv": "view", "cart": "cart", "fav": "fav", "buy": "purchase"},
        time_unit=TimeUnit.SECONDS,
        utc_offset_hours=8.0,
    ),
    FormatPreset(
        name="rees46",
        description="REES46 multi-category store: event_time,event_type,product_id,...,user_id,user_session",
        columns={"ts": "event_time", "event": "event_type", "item": "product_id",
                 "category": "category_id", "price": "price", "user": "user_id",
                 "session": "user_session"},
        events={"view": "view", "cart": "cart", "purchase": "purchase"},
        time_unit=TimeUnit.DATETIME,
    ),
    FormatPreset(
        name="diginetica",
        description="CIKM Cup 2016 DIGINETICA: item views (;-separated) plus train-purchases.csv beside them",
        delimiter=";",
        columns={"session": "session_id", "user": "user_id", "item": "item_id", "ts": "timeframe"},
        events={"view": "view", "purchase": "purchase"},
        constant_event="view",
        time_unit=TimeUnit.MILLISECONDS,
        date_column="eventdate",
        has_user_ids=False,  # about two thirds are "NA": too sparse for user history
        missing_user="NA",
        extra={"purchases_file": "train-purchases.csv", "categories_file": "product-categories.csv"},
    ),
    FormatPreset(
        name="otto",
        description="OTTO RecSys JSONL: one session per line with events [{aid, ts (ms), type}]",
        columns={"session": "session", "item": "aid", "ts": "ts", "event": "type"},
        events={"clicks": "view", "carts": "cart", "orders": "purchase"},
        time_unit=TimeUnit.MILLISECONDS,
        has_user_ids=False,
    ),
    FormatPreset(
        name="retailrocket",
        description="RetailRocket events.csv: timestamp (ms),visitorid,event,itemid,transactionid",
        columns={"ts": "timestamp", "user": "visitorid", "event": "event", "item": "itemid"},
        events={"view": "view", "addtocart": "cart", "transaction": "purchase"},
        time_unit=TimeUnit.MILLISECONDS,
    ),
    FormatPreset(
        name="canonical",
        description="ubp-edge canonical columns: user,[session],ts (Unix s),event,item,[category],[price]",
        columns={f: f for f in CANONICAL_FIELDS},
        events=CANONICAL_EVENTS,
        time_unit=TimeUnit.AUTO,
    ),
]}

# The value of ``--format`` that builds a preset from ``--map`` and ``--events``.
CUSTOM_FORMAT = "csv"
CUSTOM_DESCRIPTION = "CSV/JSONL/Parquet with a column mapping"
FORMAT_NAMES: tuple[str, ...] = (*PRESETS, CUSTOM_FORMAT)


def parse_mapping(text: str, what: str) -> dict[str, str]:
    """Parse ``a=b,c=d`` into a dict; raise ConfigError naming the bad pair."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{what}: {pair!r} is not KEY=VALUE (e.g. user=visitor_id)")
        out[key.strip()] = value.strip()
    return out


def custom_preset(column_map: str | None, event_map: str | None, time_unit: str = "auto",
                  delimiter: str = ",", header: bool = True) -> FormatPreset:
    """Build the `csv` preset from ``--map user=..,time=..,event=..,item=..`` and ``--events``.

    ``time`` is accepted as the canonical ``ts``. ``--events`` maps canonical types to source
    values (``cart=addtocart,purchase=transaction``); unmapped canonical names match themselves.

    Raises:
        ConfigError: no ``--map``, a pair that is not KEY=VALUE, an event type or time unit
            not allowed, or a ``--delimiter`` that is not one usable character.
    """
    check_delimiter(delimiter)
    if not column_map:
        raise ConfigError("--format csv needs --map, e.g. --map user=visitorid,time=timestamp,"
                          "event=event,item=itemid")
    columns = parse_mapping(column_map, "--map")
    if "time" in columns:
        columns["ts"] = columns.pop("time")
    events = dict(CANONICAL_EVENTS)
    for canonical, source in parse_mapping(event_map or "", "--events").items():
        if canonical not in EVENT_TYPES:
            raise ConfigError(f"--events: {canonical!r} is not an event type; allowed {list(EVENT_TYPES)}")
        events.pop(canonical, None)
        for value in source.split("|"):
            events[value] = canonical
    try:
        unit = TimeUnit(time_unit)
    except ValueError:
        raise ConfigError(f"--time-unit: {time_unit!r} not in {[u.value for u in TimeUnit]}") from None
    return FormatPreset(name=CUSTOM_FORMAT, columns=columns, events=events, time_unit=unit,
                        delimiter=delimiter, header=header,
                        description=CUSTOM_DESCRIPTION)


def get_preset(name: str) -> FormatPreset:
    """The preset called ``name``; ConfigError listing the allowed names otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown format {name!r}; allowed {list(FORMAT_NAMES)}")
    return PRESETS[name]
