"""Where finished blocks go when the model is compressed in memory: nowhere but the model."""

from __future__ import annotations


class InPlace:
    """The sink of an in-memory run: the compressed modules stay in the model; nothing is
    written, kept for a resume or spilled (the in-memory Fisher passes need no spill)."""

    start, modules, writes = 0, (), False

    def remembered(self, name: str, compute):
        return compute()

    def scratch(self, name: str) -> None:
        return None

    def prepare(self, source, targets, config) -> None:
        pass

    def params_after(self, source) -> int:
        return sum(p.numel() for p in {id(p): p for p in source.model.parameters()}.values())
