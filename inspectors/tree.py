"""A module tree over tensor names, with per-subtree totals, for lazy tree views.

`build_tree` groups tensors by the dotted path of their global name (shards of one tensor on
several ranks form one leaf) and sums elements and bytes bottom-up. Children are sorted
naturally (`layers.10` after `layers.9`) only when a view asks for them, so building the tree
for 100k tensors costs one pass over the names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .model import TensorInfo
from .summary import natural_key


@dataclass
class ModuleNode:
    name: str  # this path component
    path: str  # full dotted path
    children: dict[str, ModuleNode] = field(default_factory=dict)
    shards: list[TensorInfo] = field(default_factory=list)  # non-empty for a tensor leaf
    numel: int = 0
    nbytes: int = 0
    tensors: int = 0  # logical tensors below

    @property
    def is_leaf(self) -> bool:
        return bool(self.shards) and not self.children

    def sorted_children(self) -> list[ModuleNode]:
        return sorted(self.children.values(), key=lambda n: (n.name.startswith("("), natural_key(n.name)))

    def find(self, path: str) -> ModuleNode | None:
        node: ModuleNode | None = self
        for part in path.split(".") if path else []:
            node = node.children.get(part) if node else None
        return node

    def iter_leaves(self) -> Iterable[ModuleNode]:
        stack = [self]
        while stack:
            node = stack.pop()
            if node.shards:
                yield node
            stack.extend(node.children.values())


def build_tree(tensors: Iterable[TensorInfo], *, by_global: bool = True) -> ModuleNode:
    root = ModuleNode("", "")
    for t in tensors:
        name = t.global_name if by_global else t.name
        node = root
        path = ""
        for part in name.split("."):
            path = f"{path}.{part}" if path else part
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = ModuleNode(part, path)
            node = child
        node.shards.append(t)
    _total(root)
    return root


def _total(root: ModuleNode) -> None:
    """Bottom-up sums without recursion (deep names must not hit the recursion limit)."""
    order: list[ModuleNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children.values())
    for node in reversed(order):
        node.numel = sum(t.numel for t in node.shards) + sum(c.numel for c in node.children.values())
        node.nbytes = sum(t.nbytes for t in node.shards) + sum(c.nbytes for c in node.children.values())
        node.tensors = (1 if node.shards else 0) + sum(c.tensors for c in node.children.values())
