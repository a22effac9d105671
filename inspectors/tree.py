"""A module tree over tensor names, with per-subtree totals, built lazily for tree views.

`build_tree` splits every global name once and sums the totals of the whole model; a node
groups its tensors into children only when a view first asks for them, so opening a 100k-tensor
MoE costs one pass over the names and expanding a node costs one pass over what is below it.
Shards of one tensor on several ranks form one leaf. Children sort naturally (`layers.10` after
`layers.9`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from .bulk import paused_gc
from .model import TensorInfo, itemsize
from .summary import natural_key

# One tensor below a node: its full dotted name, the tensor, its element and byte counts, whether
# it is the first shard of its logical tensor (shards count as one tensor) and whether it goes
# under the NON_MODEL node. Names are never split: a node slices the next component on demand.
_Item = tuple[str, TensorInfo, int, int, bool, bool]

NON_MODEL = "(optimizer, rng, other)"


class ModuleNode:
    """One module path: totals are known at creation; children are grouped on first access."""

    __slots__ = ("name", "path", "shards", "numel", "nbytes", "tensors", "pieces", "has_children", "_items", "_children", "_start")

    def __init__(self, name: str, path: str, start: int, items: list[_Item]) -> None:
        self.name = name  # this path component
        self.path = path  # full dotted path
        self._start = start  # where the next name component starts in the items' names
        self._items = items
        self._children: dict[str, ModuleNode] | None = None
        self.shards: list[TensorInfo] = []  # non-empty for a tensor leaf
        numel = nbytes = tensors = 0
        has_children = False
        end = start - 1  # a name that ends here is this node's own tensor
        for full, info, n, b, first, _ in items:
            numel += n
            nbytes += b
            tensors += first
            if len(full) == end:
                self.shards.append(info)
            else:
                has_children = True
        self.numel, self.nbytes, self.tensors, self.has_children = numel, nbytes, tensors, has_children
        self.pieces = len(items)  # stored tensors (shards, replicas): `numel` counts every one

    @property
    def elements_label(self) -> str:
        """What `numel` counts: "elements", or "stored elements" where ranks hold shards or copies."""
        return "stored elements" if self.pieces > self.tensors else "elements"

    @property
    def children(self) -> dict[str, ModuleNode]:
        if self._children is None:
            with paused_gc():
                self._children = self._group()
        return self._children

    def _group(self) -> dict[str, ModuleNode]:
        groups: dict[str, list[_Item]] = {}
        start = self._start
        at_root = not self.path
        for item in self._items:
            full = item[0]
            if at_root and item[5]:
                key = NON_MODEL
            elif len(full) < start:
                continue  # this node's own tensor
            else:
                dot = full.find(".", start)
                key = full[start:dot] if dot >= 0 else full[start:]
            groups.setdefault(key, []).append(item)
        prefix = f"{self.path}." if self.path and self.name != NON_MODEL else ""
        return {
            key: ModuleNode(key, key if key == NON_MODEL and at_root else prefix + key,
                            0 if key == NON_MODEL and at_root else start + len(key) + 1, group)
            for key, group in groups.items()
        }

    @property
    def is_leaf(self) -> bool:
        return bool(self.shards) and not self.has_children

    def sorted_children(self) -> list[ModuleNode]:
        return sorted(self.children.values(), key=lambda n: (n.name.startswith("("), natural_key(n.name)))

    def find(self, path: str) -> ModuleNode | None:
        node: ModuleNode | None = self
        for part in path.split(".") if path else []:
            node = node.children.get(part) if node else None
        return node

    def iter_leaves(self) -> Iterator[ModuleNode]:
        stack = [self]
        while stack:
            node = stack.pop()
            if node.shards:
                yield node
            if node.has_children:
                stack.extend(node.children.values())

    def __repr__(self) -> str:
        return f"ModuleNode({self.path!r}, tensors={self.tensors}, numel={self.numel})"


def build_tree(tensors: Iterable[TensorInfo], *, by_global: bool = True, separate_non_model: bool = False) -> ModuleNode:
    """The root of the module tree. With `separate_non_model`, optimizer/rng tensors go under one
    top node named NON_MODEL (their paths below it stay their own names) and the root's totals
    count the model alone."""
    with paused_gc():
        items = _items(tensors, by_global, separate_non_model)
        root = ModuleNode("", "", 0, items)
        if separate_non_model and any(item[5] for item in items):
            other = root.children[NON_MODEL]
            root.numel -= other.numel
            root.nbytes -= other.nbytes
            root.tensors -= other.tensors
            root.pieces -= other.pieces
        return root


def _items(tensors: Iterable[TensorInfo], by_global: bool, separate_non_model: bool) -> list[_Item]:
    items: list[_Item] = []
    seen: tuple[set[str], set[str]] = (set(), set())  # model, other
    sizes: dict[str, float] = {}
    prod = math.prod
    append = items.append
    for t in tensors:
        name = t.global_name if by_global else t.name
        other = separate_non_model and t.group != "model"
        size = sizes.get(t.dtype)
        if size is None:
            size = sizes[t.dtype] = itemsize(t.dtype)
        numel = prod(t.shape)
        names = seen[other]
        first = name not in names  # shards of one logical tensor count once
        if first:
            names.add(name)
        append((name, t, numel, int(numel * size), first, other))
    return items
