"""Strict, SimpleDet-style configuration: plain Python classes, checked field by field.

A config module is an ordinary Python file that defines *section* classes (``General``,
``schedule``, ``optimizer``, ...). ``config/base.py`` declares every section and every field
with its default value; an experiment subclasses the sections it changes::

    from config import base

    class General(base.General):
        name = "effdet_b2"

A field that the base does not declare is an error raised while the module is imported,
naming the field and the closest declared one. ``--set Section.field=value`` overrides go
through the same check and must keep the field's type.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Iterable


from core.config.schema import (  # noqa: F401  (the public names of configs live here too)
    Auto,
    ConfigError,
    Section,
    UnknownFieldError,
    _DECLARED,
    _describe,
    _nearest,
    _public_fields,
    _type_ok,
    is_auto,
    takes_auto,
)


class Config:
    """A resolved experiment: one attribute per section, each a plain namespace of values.

    ``cfg.General.batch_image`` reads a field. Values are copies, so overrides applied to one
    ``Config`` do not leak into the module's classes or another ``Config``.
    """

    def __init__(self, sections: dict[str, dict[str, Any]], source: str):
        self._sections = sections
        self.source = source
        for name, values in sections.items():
            setattr(self, name, _Namespace(name, values))

    def section_names(self) -> list[str]:
        return list(self._sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """All sections and values as plain dicts (for saving next to checkpoints)."""
        return {name: getattr(self, name).as_dict() for name in self._sections}

    def override(self, assignment: str) -> None:
        """Apply ``Section.field=value``; ``value`` is a Python literal or a bare string."""
        if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
            raise ConfigError(f"override '{assignment}' must look like Section.field=value")
        key, raw = assignment.split("=", 1)
        section, field = key.strip().split(".", 1)
        if section not in self._sections:
            raise ConfigError(f"override '{assignment}': unknown section '{section}'{_nearest(section, self._sections)}")
        values = getattr(self, section)._values
        if field not in values:
            raise ConfigError(f"override '{assignment}': unknown field '{section}.{field}'{_nearest(field, values)}")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        declared = _DECLARED.get((section, field), values[field])
        kind = declared.kind if isinstance(declared, Auto) else type(declared)
        if (kind is str or value == "auto") and not isinstance(value, str):
            value = raw.strip()
        if not _type_ok(declared if declared is not None else values[field], value):
            wanted = _describe(declared if declared is not None else values[field])
            raise ConfigError(f"override '{assignment}': field '{section}.{field}' must be {wanted}, got {value!r}")
        if kind is float and isinstance(value, int):
            value = float(value)
        values[field] = value

    def save(self, path: Path, notes: dict[str, Any] | None = None) -> None:
        """Write the resolved values as JSON (atomically) for the record of a run, with ``notes``
        (e.g. why the automatic recipe chose its values) beside them."""
        from core.engine.output_paths import atomic_output

        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"source": self.source, "sections": self.to_dict(), **(notes or {})},
                                      indent=2, default=str))


class _Namespace:
    """One section's values; reading or writing an undeclared field is an error."""

    def __init__(self, section: str, values: dict[str, Any]):
        object.__setattr__(self, "_name", section)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, field: str) -> Any:  # called only when normal lookup fails
        if field.startswith("__"):
            raise AttributeError(field)
        values = object.__getattribute__(self, "_values")
        if field in values:
            return values[field]
        raise UnknownFieldError(f"unknown field '{self._name}.{field}'{_nearest(field, values)}")

    def __setattr__(self, field: str, value: Any) -> None:
        if field not in self._values:
            raise UnknownFieldError(f"unknown field '{self._name}.{field}'{_nearest(field, self._values)}")
        self._values[field] = value

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"{self._name}({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


def _collect_sections(module: Any) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for attr in dir(module):
        obj = getattr(module, attr)
        if isinstance(obj, type) and issubclass(obj, Section) and obj is not Section and obj._fields:
            name = obj._section
            if attr != name:
                continue  # e.g. `from config import base` re-exports; only the section's own name counts
            sections[name] = {f: _copy(getattr(obj, f)) for f in obj._fields}
    return sections


def _check_section_classes(module: Any, path: Path, names: list[str]) -> None:
    """A class the config module defines that DetLab would not read as a section is an error: a section
    under another name (``class Neck(base.neck)``) or a plain class named like a section."""
    for attr, obj in vars(module).items():
        if not isinstance(obj, type) or obj.__module__ != module.__name__:
            continue
        if issubclass(obj, Section):
            if getattr(obj, "_fields", None) and attr != obj._section:
                raise ConfigError(f"{path}: class '{attr}' extends section '{obj._section}' under another name, "
                                  f"so it would be ignored; name it '{obj._section}'")
            continue
        close = [n for n in names if n.lower() == attr.lower()] or difflib.get_close_matches(attr, names, n=1,
                                                                                            cutoff=0.8)
        if close:
            raise ConfigError(f"{path}: class '{attr}' is not a config section, so it would be ignored; "
                              f"write class {close[0]}(base.{close[0]})")


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Import the config module at ``path`` and apply ``Section.field=value`` overrides.

    Raises ``ConfigError`` naming the file for a missing module, an unknown field or a type
    mismatch. Every section declared in ``config/base.py`` is present in the result. A
    ``General.name`` left empty (the base's default: the module did not set it, nor did an override)
    becomes the file's stem, so ``config/effdet_b2.py`` runs in ``runs/effdet_b2``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass a module such as config/effdet_b0.py")
    root = Path(__file__).resolve().parents[2]  # the repository: core/config/loading.py
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module_name = f"_detlab_config_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    from config import base  # the declarations; imported here so symbol/ never needs config/

    sections = _collect_sections(base)
    _check_section_classes(module, path, list(sections))
    for name, values in _collect_sections(module).items():
        sections[name].update(values)
    cfg = Config(sections, source=str(path))
    for assignment in overrides:
        cfg.override(assignment)
    if not cfg.General.name:  # neither the module nor an override named the run: it is named after the file
        cfg.General.name = path.stem
    return cfg


def _upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """Saved values in today's names: a run saved before ``head.type = "retina"`` existed named
    RetinaNet subnets ``head.type = "effdet"`` with ``head.separable = False``."""
    head = saved.get("head")
    if isinstance(head, dict) and "separable" in head:
        head = {k: v for k, v in head.items() if k != "separable"}
        if saved["head"]["separable"] is False and head.get("type") == "effdet":
            head["type"] = "retina"
        saved = {**saved, "head": head}
    return saved


def config_from_dict(saved: dict[str, dict[str, Any]], source: str) -> Config:
    """A :class:`Config` from saved values (``Config.to_dict()``, as checkpoints carry them) on top of
    ``config/base.py``'s defaults: fields declared since get their defaults, fields no longer
    declared are ignored."""
    from config import base

    sections = _collect_sections(base)
    saved = _upgrade(saved)
    for name, values in saved.items():
        if name in sections and isinstance(values, dict):
            sections[name].update({k: v for k, v in values.items() if k in sections[name]})
    return Config(sections, source=source)
