"""Parts found by name: one registry per kind (backbone, neck, head).

A part's own file registers its builder under the name a config gives as ``backbone.type``,
``neck.type`` or ``head.type``; ``symbol.builder`` looks it up. Adding a part is its file, one import
in its package's ``__init__.py`` (which runs the registration) and a config that names it.

Builder contracts (``symbol.builder.build_detector`` calls them in this order):

* backbone: ``build(section) -> nn.Module`` with ``levels`` (pyramid levels it gives, finest first),
  ``channels`` (one per level) and ``stages()``; ``forward(images [B, 3, H, W])`` -> list of maps;
* neck: ``build(section, in_channels, in_levels) -> nn.Module`` with ``levels`` and ``out_channels``
  (one per output level) and ``stages()``; ``forward(list of maps) -> list of maps``;
* head: ``build(cfg, in_channels, levels, num_classes) -> nn.Module`` (the whole config: a head
  reads its anchors too); ``forward(list of maps) -> (class outputs, box outputs)``, lists over levels.

Options only one part reads are declared next to it: ``register(name, options=Options)`` where
``Options`` is a plain class whose public attributes are the fields and their defaults, commented
as ``config/base.py`` comments its own. ``config/base.py`` joins every registered part's options
to the section (``class neck(Section, options=NECKS)``), so experiment modules and ``--set`` set
them like any other field, and a part registered later (a plugin, a test's toy part) adds its own.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

Builder = TypeVar("Builder", bound=Callable)


class Registry(Generic[Builder]):
    """Builders of one kind of part, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Builder] = {}
        self._options: dict[str, tuple[Any, str]] = {}  # field -> (default, the part that declared it)
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def register(self, name: str, options: type | None = None) -> Callable[[Builder], Builder]:
        """Decorator: ``@NECKS.register("bifpn", options=BiFPNOptions)`` over the builder function.
        ``options``: the fields only this part reads (public class attributes -> defaults); a field
        another part declared too must have the same default."""
        def add(builder: Builder) -> Builder:
            if name in self._builders:
                raise ValueError(f"{self.kind}.type '{name}' is registered twice "
                                 f"({self._builders[name].__module__} and {builder.__module__})")
            declared = option_fields(options) if options is not None else {}
            for field, default in declared.items():
                if field in self._options and self._options[field][0] != default:
                    raise ValueError(f"{self.kind}.{field}: '{name}' declares default {default!r}, but "
                                     f"'{self._options[field][1]}' declared {self._options[field][0]!r}")
            self._builders[name] = builder
            new = {f: v for f, v in declared.items() if f not in self._options}
            self._options.update({f: (v, name) for f, v in new.items()})
            for listener in self._listeners:
                listener(new)
            return builder
        return add

    def options(self) -> dict[str, Any]:
        """Every registered part's own fields and their defaults."""
        return {field: default for field, (default, _) in self._options.items()}

    def on_new_options(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(fields -> defaults)`` whenever a part registered from now on brings new fields."""
        self._listeners.append(listener)

    def get(self, name: str) -> Builder:
        """The builder registered as ``name``; ValueError naming the choices (and the nearest) otherwise."""
        if name not in self._builders:
            near = difflib.get_close_matches(str(name), list(self._builders), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"unknown {self.kind}.type '{name}'; choose one of {', '.join(self)}{hint}")
        return self._builders[name]

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)


def option_fields(options: type) -> dict[str, Any]:
    """The public, non-callable class attributes of ``options`` (its bases' too), in declaration order."""
    fields: dict[str, Any] = {}
    for klass in reversed(options.__mro__[:-1]):  # object last
        fields.update({k: v for k, v in vars(klass).items() if not k.startswith("_") and not callable(v)
                       and not isinstance(v, (staticmethod, classmethod, property))})
    return fields


BACKBONES: Registry = Registry("backbone")
NECKS: Registry = Registry("neck")
HEADS: Registry = Registry("head")
