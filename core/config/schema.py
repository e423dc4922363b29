"""The declaration side of configs: ``Section`` (whose subclasses declare and override fields, checked
as each class is created), ``Auto`` (a field the trainer chooses at start) and the config errors.

``config/base.py`` imports this module to declare its sections; ``core.config.loading`` loads experiment
modules against those declarations. Keeping the two apart keeps the import graph free of cycles.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class ConfigError(ValueError):
    """A config module, field or override is invalid; the message says which and how to fix it."""


class Auto(str):
    """``"auto"`` as a field's declared default: the trainer chooses the value when a run first starts
    (``core.engine.recipe``). An experiment module or ``--set`` may give a value of type ``kind``
    instead, or ``"auto"`` again."""

    kind: type

    def __new__(cls, kind: type) -> "Auto":
        obj = super().__new__(cls, "auto")
        obj.kind = kind
        return obj


def is_auto(value: Any) -> bool:
    """Whether a resolved config value still says ``"auto"``."""
    return isinstance(value, str) and value == "auto"


def takes_auto(section: str, field: str) -> bool:
    """Whether ``config/base.py`` declares ``section.field`` as :class:`Auto` (chosen at start)."""
    return isinstance(_DECLARED.get((section, field)), Auto)


class UnknownFieldError(ConfigError, AttributeError):
    """Code or a user asked for a field that no section declares."""


def _public_fields(namespace: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and not callable(v) and not isinstance(v, (staticmethod, classmethod, property))
    }


def nearest_name(name: Any, choices: Iterable[str]) -> str | None:
    """The choice closest to ``name`` (difflib, any similarity), None when there are no choices."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.0)
    return match[0] if match else None


def _nearest(name: str, choices: Iterable[str]) -> str:
    near = nearest_name(name, choices)
    return f"; did you mean '{near}'?" if near else ""


def _type_ok(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace ``default``: same type, int for float, anything for None."""
    if default is None or value is None:
        return True
    if isinstance(default, Auto):
        return value == "auto" or _type_ok(default.kind(), value)
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        # elements as the declared list's first one (nested lists too); an empty default takes any
        return not default or all(_type_ok(default[0], v) for v in value)
    return isinstance(value, type(default))


_DECLARED: dict[tuple[str, str], Any] = {}  # (section, field) -> the default config/base.py declares


def _describe(default: Any) -> str:
    """The type a field takes, in words: ``float``, ``list of int``, ``list of list of float``, ``float or auto``."""
    if isinstance(default, Auto):
        return f"{default.kind.__name__} or auto"
    if isinstance(default, (list, tuple)) and default:
        return f"list of {_describe(default[0])}"
    return type(default).__name__


class _SectionMeta(type):
    """Declares fields on direct subclasses of ``Section``; later subclasses may only override.

    A declaring class may take ``options=registry`` (``class neck(Section, options=NECKS)``): every
    option a registered part declares (``registry.options()``, field -> default) becomes a field of
    the section too, and so does every option of a part registered later."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], options: Any = None):
        cls = super().__new__(mcs, name, bases, namespace)
        declaring = any(b.__name__ == "Section" and b.__module__ == __name__ for b in bases)
        if name == "Section" and namespace.get("__module__") == __name__:
            cls._fields = {}
            return cls
        if declaring:
            cls._fields = dict(_public_fields(namespace))
            cls._section = name
            _DECLARED.update({(name, f): v for f, v in cls._fields.items()})
            if options is not None:
                _add_part_options(cls, options.options())
                options.on_new_options(lambda fields: _add_part_options(cls, fields))
            return cls
        if options is not None:
            raise ConfigError(f"{namespace.get('__module__', '?')}: only config/base.py's sections take options=")
        parent_fields: dict[str, Any] = {}
        for base in bases:
            parent_fields.update(getattr(base, "_fields", {}))
        if not parent_fields:
            return cls
        for field, value in _public_fields(namespace).items():
            if field not in parent_fields:
                raise ConfigError(
                    f"{namespace.get('__module__', '?')}: unknown field '{cls._section}.{field}'"
                    f"{_nearest(field, parent_fields)}"
                )
            if not _type_ok(parent_fields[field], value):
                raise ConfigError(
                    f"{namespace.get('__module__', '?')}: field '{cls._section}.{field}' must be "
                    f"{_describe(parent_fields[field])}, got {value!r}"
                )
        cls._fields = parent_fields
        return cls


def _add_part_options(section: type, fields: dict[str, Any]) -> None:
    """Fields a part declares next to its code (``symbol.registry.Registry.register(options=...)``)
    join ``section``; a part may not redeclare a field the section itself declares."""
    for field, default in fields.items():
        if field in section._fields:
            raise ConfigError(f"{section._section}.{field} is declared by config/base.py and by a part's options; "
                              "declare it in one place")
        section._fields[field] = default
        setattr(section, field, default)
        _DECLARED[(section._section, field)] = default


class Section(metaclass=_SectionMeta):
    """Base of every config section. Direct subclasses declare fields; their subclasses override."""

    _fields: dict[str, Any]
    _section: str
