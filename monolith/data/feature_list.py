"""Monolith's ``feature_list.conf``: which features exist, their slots and how they are extracted.

The file is line based; blank lines and lines starting with ``#`` are skipped. Each other line is
one entry of ``key=value`` pairs separated by ``;`` (or ``,`` / spaces), e.g.::

    column_name : user_id, doc_id, doc_tags
    feed_name=doc_id; feature_id=368192
    feature_name=f_doc_id; depend=doc_id; method=DirectString; slot=202; feature_id=368766
    feature_name=fc_doc_tags_cnt; depend=doc_tags; method=Tags; feature_version=2; args=1,4; slot=4735; shared=true

A line starting with ``column_name`` lists the raw columns, one starting with ``cache_column`` names a
cache column; other lines starting with ``feed`` are :class:`Feed` entries, with ``cache``
:class:`Cache` entries, and all the rest :class:`Feature` entries, keyed by ``feature_name``. List
values (``depend``, ``args``, ``cache_keys``, ``feature_group``, ``input_optional``) are
comma-separated; booleans are true for ``true/yes/t/y/1`` (any case). This is the reading Monolith's
``FeatureList.parse`` does; unlike it, a malformed value raises ``ValueError`` naming the file and
line, and keys it does not know are kept in :attr:`Feature.extra` instead of being dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from monolith.fid import slot_from_name

__all__ = ["Cache", "Feature", "FeatureList", "Feed"]

_TRUE = {"true", "yes", "t", "y", "1"}
# A key is the identifier right before "="; its value runs to the next key (Monolith's reading).
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _bool(value: str) -> bool:
    return value.strip().lower() in _TRUE


def _items(value: str) -> list[str]:
    return [item.strip().replace('"', "").replace("'", "") for item in value.strip().split(",")]


@dataclass
class Feed:
    """A raw input (``feed_name=...``) of the feature extraction."""

    feed_name: str
    shared: bool = False
    feature_id: int | None = None

    @property
    def name(self) -> str:
        return self.feed_name


@dataclass
class Cache:
    """A cache entry (``cache_...`` lines) of the feature extraction."""

    cache_column: str | None = None
    cache_name: str | None = None
    capacity: int | None = None
    timeout: int | None = None
    cache_type: str | None = None
    cache_key_class: str | None = None

    @property
    def name(self) -> str:
        """``cache_name``, else ``cache_key_class``, else ``"cache_column"`` (Monolith's keying)."""
        if self.cache_name is not None:
            return self.cache_name
        if self.cache_key_class is not None:
            return self.cache_key_class
        if self.cache_column is not None:
            return "cache_column"
        raise ValueError("a cache entry needs cache_name, cache_key_class or cache_column")


@dataclass
class Feature:
    """One ``feature_name=...`` entry.

    Attributes:
        slot: the slot of the feature's FIDs (v1 layout unless ``feature_version == 2``).
        extra: keys Monolith's ``Feature`` has no field for, as written.
    """

    feature_name: str
    depend: list[str] | None = None
    method: str | None = None
    slot: int | None = None
    args: list[str] | None = None
    feature_version: int | None = None
    shared: bool = False
    cache_keys: list[str] | None = None
    need_raw: bool = False
    feature_id: int | None = None
    input_optional: list[bool] | None = None
    feature_group: list[str] | None = None
    extra: dict[str, str] = field(default_factory=dict)


_CONVERT = {
    "slot": int,
    "feature_id": int,
    "feature_version": int,
    "capacity": int,
    "timeout": int,
    "shared": _bool,
    "need_raw": _bool,
    "depend": _items,
    "args": _items,
    "cache_keys": _items,
    "feature_group": _items,
    "input_optional": lambda v: [item == "true" for item in _items(v)],
}


def _pairs(line: str) -> dict[str, str]:
    keys = list(_KEY.finditer(line))
    pairs = {}
    for k, match in enumerate(keys):
        end = keys[k + 1].start() if k + 1 < len(keys) else len(line)
        pairs[match.group(1)] = line[match.end() : end].strip().rstrip(",;").strip()
    return pairs


def _entry(cls: type, pairs: dict[str, str], keep_extra: bool) -> Feed | Cache | Feature:
    known = cls.__dataclass_fields__.keys() - {"extra"}
    kwargs = {k: _CONVERT.get(k, str)(v) for k, v in pairs.items() if k in known}
    if keep_extra:
        kwargs["extra"] = {k: v for k, v in pairs.items() if k not in known}
    return cls(**kwargs)


def _after_keyword(line: str, keyword: str) -> str:
    """``column_name : a, b`` -> ``a, b`` (the separator may be ``:`` or ``=``)."""
    return line[len(keyword) :].strip().lstrip(":=").strip()


class FeatureList:
    """The entries of a ``feature_list.conf``; features are looked up by name or slot.

    A name matches a feature called ``name``, ``f_name`` or ``fc_name`` (per ``-``-separated part too),
    as in Monolith, so ``feature_list["doc_id"]`` finds ``f_doc_id``.

    Attributes:
        column_names: the ``column_name`` list, or ``None`` when the file has none.
        feeds, caches, features: entries by name, in file order.
    """

    def __init__(
        self,
        features: dict[str, Feature],
        feeds: dict[str, Feed] | None = None,
        caches: dict[str, Cache] | None = None,
        column_names: set[str] | None = None,
    ) -> None:
        self.features = features
        self.feeds = feeds or {}
        self.caches = caches or {}
        self.column_names = column_names
        self._by_slot: dict[int, list[Feature]] = {}
        for feature in features.values():
            if feature.slot is not None:
                self._by_slot.setdefault(feature.slot, []).append(feature)

    @classmethod
    def parse(cls, path: str | os.PathLike[str]) -> FeatureList:
        """Read a ``feature_list.conf``.

        Raises:
            FileNotFoundError: no such file (naming it).
            ValueError: a malformed line or one that is not UTF-8, with the file and 1-based line
                number.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature list not found: {path}")
        with open(path, "rb") as f:
            # bytes.splitlines splits where text mode's universal newlines do.
            raw_lines = f.read().splitlines()
        lines = []
        for line_no, raw in enumerate(raw_lines, 1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}, line {line_no}, byte {e.start + 1}: expected UTF-8 text, got byte {raw[e.start]:#04x}"
                ) from e
        return cls.from_lines(lines, source=path)

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<feature_list>") -> FeatureList:
        """Parse the lines of a ``feature_list.conf``; ``source`` names it in errors."""
        features: dict[str, Feature] = {}
        feeds: dict[str, Feed] = {}
        caches: dict[str, Cache] = {}
        column_names = None
        for line_no, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("column_name"):
                    column_names = {item.strip() for item in _after_keyword(line, "column_name").split(",")}
                elif line.startswith("cache_column"):
                    cache = Cache(cache_column=_after_keyword(line, "cache_column"))
                    caches[cache.name] = cache
                elif line.startswith("feed"):
                    feed = _entry(Feed, _pairs(line), keep_extra=False)
                    feeds[feed.name] = feed
                elif line.startswith("cache"):
                    cache = _entry(Cache, _pairs(line), keep_extra=False)
                    caches[cache.name] = cache
                else:
                    # A repeated feature_name keeps the last entry, as Monolith does.
                    feature = _entry(Feature, _pairs(line), keep_extra=True)
                    features[feature.feature_name] = feature
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}, line {line_no}: malformed feature list entry {line!r}: {e}") from e
        return cls(features, feeds, caches, column_names)

    def _lookup(self, name: str) -> Feature | None:
        name = name.strip()
        candidates = [name, f"f_{name}", f"fc_{name}"]
        if "-" in name:
            parts = name.split("-")
            candidates += ["-".join(f"fc_{p}" for p in parts), "-".join(f"f_{p}" for p in parts)]
        return next((self.features[c] for c in candidates if c in self.features), None)

    def __getitem__(self, item: str | int) -> Feature:
        """The feature called ``item`` (see the class doc), or the first one with slot ``item``."""
        found = self._by_slot.get(item, [None])[0] if isinstance(item, int) else self._lookup(item)
        if found is None:
            raise KeyError(f"feature list has no feature {item!r}")
        return found

    def get(self, item: str | int, default: Feature | None = None) -> Feature | None:
        try:
            return self[item]
        except KeyError:
            return default

    def __contains__(self, item: object) -> bool:
        if isinstance(item, int):
            return item in self._by_slot
        return isinstance(item, str) and self._lookup(item) is not None

    def get_with_slot(self, slot: int) -> list[Feature]:
        """Every feature with ``slot`` (several may share one)."""
        return list(self._by_slot.get(slot, []))

    def slot_of(self, name: str) -> int | None:
        """The slot of feature ``name``: from this list, else from a ``slot_N`` / ``fc_slot_N`` name.

        ``None`` when neither gives one.
        """
        feature = self._lookup(name)
        if feature is not None:
            return feature.slot
        return slot_from_name(name)

    def name_of_slot(self, slot: int, fid_version: int = 1) -> str | None:
        """The name of the feature whose FIDs of layout ``fid_version`` carry ``slot``, or ``None``.

        As in Monolith, a v1 FID belongs to a feature without ``feature_version`` or with
        ``feature_version=1``, and a v2 FID to one with ``feature_version=2``.
        """
        for feature in self._by_slot.get(slot, []):
            if (feature.feature_version or 1) == fid_version:
                return feature.feature_name
        return None

    def __len__(self) -> int:
        return len(self.features)

    def __iter__(self) -> Iterator[Feature]:
        return iter(self.features.values())
