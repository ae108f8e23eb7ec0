"""YAML in, Python objects out: every config and rules file is read here, so each one gets the same fast loader
and the same ``path: invalid YAML: line L, column C: ...`` problem lines.

``load_yaml`` is ``yaml.safe_load`` (same result, same errors) built straight from libyaml's events;
``read_yaml_file`` adds reading the file and turns every failure into one :class:`~common.errors.ConfigError`.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import yaml
from yaml import events as _ev
from yaml.nodes import ScalarNode

from common.errors import ConfigError

__all__ = ["load_yaml", "read_yaml_file"]

_CLOADER: Any = getattr(yaml, "CSafeLoader", None)  # PyYAML's libyaml binding (in PyYAML's wheels)
_T = "tag:yaml.org,2002:"
# Tags whose SafeConstructor functions build a scalar in one call (the collection ones are generators).
_SCALAR_TAGS = frozenset(_T + t for t in ("null", "bool", "int", "float", "binary", "timestamp", "str"))


class _NotPlain(Exception):
    """The document uses something the streaming builder leaves to PyYAML (anchors, aliases, merge keys, explicit
    collection tags, complex keys, several documents)."""


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, faster and leaner for large documents, with the same result and the same errors.

    A 100,000-device config (6.6 MB) took 60–80 s in ``yaml.safe_load`` and raised RSS by over 600 MiB for good:
    PyYAML composes a node (and two marks) for every scalar before it constructs anything, and the cyclic GC rescans
    that growing heap again and again.  Here libyaml's events (``CSafeLoader``) become Python objects as they come,
    with PyYAML's own resolver and scalar constructors, while the cyclic GC is paused (a document has no cycles):
    1.4–1.9 s and +70 MiB for that file (measured on a shared 2-core machine).  Anything the streaming builder does
    not handle goes to ``CSafeLoader`` whole, and any error is reported by re-reading the text with
    ``yaml.safe_load``, so messages (``line 3, column 5: ...``) are exactly those of the pure-Python loader.
    """
    if _CLOADER is None:
        return yaml.safe_load(text)
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            return _stream_build(text)
        except _NotPlain:
            pass
        except Exception:  # whatever it is, the reference loader reports it (or proves it wrong)
            return yaml.safe_load(text)
        try:
            return yaml.load(text, Loader=_CLOADER)  # CSafeLoader: the safe loader
        except Exception:  # libyaml words its errors differently: report PyYAML's
            return yaml.safe_load(text)
    finally:
        if enabled:
            gc.enable()


def _stream_build(text: str) -> Any:
    """One document built from libyaml's event stream without composing nodes; raises ``_NotPlain`` to defer."""
    loader = _CLOADER(text)
    get = loader.get_event
    resolve = loader.resolve
    constructors = loader.yaml_constructors
    scalar_event, mapping_start, mapping_end = _ev.ScalarEvent, _ev.MappingStartEvent, _ev.MappingEndEvent
    sequence_start, sequence_end = _ev.SequenceStartEvent, _ev.SequenceEndEvent
    str_tag = _T + "str"

    def scalar_tag(event: Any) -> str:
        if event.anchor is not None:
            raise _NotPlain
        tag = event.tag
        if tag is None or tag == "!":  # as yaml.composer.Composer.compose_scalar_node
            tag = resolve(ScalarNode, event.value, event.implicit)
        if tag not in _SCALAR_TAGS:
            raise _NotPlain  # merge ("<<") and value ("=") keys, custom or collection tags
        return str(tag)

    def scalar(event: Any, tag: str) -> Any:
        if tag == str_tag:
            return event.value
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        return constructors[tag](loader, node)

    def build(event: Any) -> Any:
        kind = type(event)
        if kind is scalar_event:
            return scalar(event, scalar_tag(event))
        if kind is not sequence_start and kind is not mapping_start:
            raise _NotPlain  # an alias
        if event.anchor is not None or event.tag not in (None, "!"):
            raise _NotPlain  # anchors, !!set, !!omap, ...
        if kind is sequence_start:
            items: list[Any] = []
            while type(event := get()) is not sequence_end:
                items.append(build(event))
            return items
        mapping: dict[Any, Any] = {}
        while type(event := get()) is not mapping_end:
            if type(event) is not scalar_event:
                raise _NotPlain  # a complex key
            key = scalar(event, scalar_tag(event))
            mapping[key] = build(get())  # a repeated key: the last wins, as in SafeConstructor
        return mapping

    try:
        get()  # StreamStartEvent
        event = get()
        if type(event) is _ev.StreamEndEvent:
            return None  # an empty document
        data = build(get())  # after the DocumentStartEvent
        get()  # DocumentEndEvent
        if type(get()) is not _ev.StreamEndEvent:
            raise _NotPlain  # several documents: PyYAML's error
        return data
    finally:
        loader.dispose()


def read_yaml_file(path: Path, *, label: str | None = None) -> Any:
    """The document in ``path`` (None for an empty file); raises :class:`ConfigError` with one problem, prefixed
    with ``label`` (default ``"<path>: "``), when the file cannot be read, is not UTF-8 or is not YAML."""
    where = f"{path}: " if label is None else label
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{where}cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{where}not UTF-8 text: byte {exc.start} is {exc.object[exc.start]:#04x}"]) from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}invalid YAML: {at}{getattr(exc, 'problem', exc)}"]) from None
    except (ValueError, TypeError) as exc:  # a tagged scalar PyYAML cannot build, e.g. ``!!int ten``
        raise ConfigError([f"{where}invalid YAML: {exc}"]) from None
