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
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

Builder = TypeVar("Builder", bound=Callable)


class Registry(Generic[Builder]):
    """Builders of one kind of part, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Builder] = {}

    def register(self, name: str) -> Callable[[Builder], Builder]:
        """Decorator: ``@NECKS.register("bifpn")`` over the builder function."""
        def add(builder: Builder) -> Builder:
            if name in self._builders:
                raise ValueError(f"{self.kind}.type '{name}' is registered twice "
                                 f"({self._builders[name].__module__} and {builder.__module__})")
            self._builders[name] = builder
            return builder
        return add

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


BACKBONES: Registry = Registry("backbone")
NECKS: Registry = Registry("neck")
HEADS: Registry = Registry("head")
