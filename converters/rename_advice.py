"""Concrete `--rename` rules for stored tensors no rule can place.

For each unplaced stored name, the closest expected-but-missing name with the same layer /
expert numbers is its likely meaning. The name components that differ between the two (after
the common head and tail) become one rule: a prefix change (`^transformer\\.=model.`) or a
component swap with one component of context (`\\.mlp\\.w2\\.=.mlp.down_proj.`). Numbers are
never renamed. Rules are offered in order of how many tensors they explain, and one is kept
only when, applied after the ones already kept, it places more unplaced tensors onto missing
names without two landing on one: a suggestion is offered only when it really fixes names.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable

from .renames import parse_rule

_INDEX = re.compile(r"(?<=\.)(\d+)(?=\.|$)")
MAX_CANDIDATES = 8


def suggest_renames(unmatched: Iterable[str], missing: Iterable[str]) -> list[str]:
    """`PATTERN=REPLACEMENT` rules that place unmatched stored names onto missing ones."""
    unmatched, missing = list(dict.fromkeys(unmatched)), list(dict.fromkeys(missing))
    if not unmatched or not missing:
        return []
    votes: Counter[str] = Counter()
    pools: dict[tuple[str, ...], list[str]] = {}
    for name in missing:
        pools.setdefault(tuple(_INDEX.findall(name)), []).append(name)
    for name in unmatched:
        near = difflib.get_close_matches(name, pools.get(tuple(_INDEX.findall(name)), []), n=1, cutoff=0.3)
        if near:
            votes.update(_rules(name, near[0]))
    kept: list[str] = []
    placed = 0
    for rule, _ in votes.most_common(MAX_CANDIDATES):
        now = _placed(unmatched, set(missing), [*kept, rule])
        if now > placed:
            kept.append(rule)
            placed = now
    return kept


def _rules(old: str, new: str) -> list[str]:
    """One rule per differing run of name components (numbers excluded)."""
    a, b = old.split("."), new.split(".")
    out = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        mid_a, mid_b = a[i1:i2], b[j1:j2]
        if any(p.isdigit() for p in mid_a + mid_b) or not "".join(mid_a + mid_b).isprintable():
            continue  # numbers are indices; control characters are never offered back to a terminal
        if i1 > 0 and not a[i1 - 1].isdigit():  # one component of context before
            mid_a, mid_b, i1, j1 = [a[i1 - 1], *mid_a], [a[i1 - 1], *mid_b], i1 - 1, j1 - 1
        if not mid_a and i1 > 0:
            continue  # an insertion after a number: no anchor to place it
        at_start, at_end = i1 == 0, i2 == len(a)
        edge = ([] if at_start else [""]), ([] if at_end else [""])
        old_text = ".".join([*edge[0], *mid_a, *edge[1]])
        new_text = ".".join([*edge[0], *mid_b, *edge[1]])
        pattern = ("^" if at_start else "") + re.escape(old_text) + ("$" if at_end else "")
        out.append(f"{pattern}={new_text.replace(chr(92), chr(92) * 2)}")
    return out


def _placed(unmatched: list[str], missing: set[str], rules: list[str]) -> int:
    """Unmatched names the rules turn into distinct missing names (0 when two collide)."""
    compiled = [parse_rule(r) for r in rules]
    targets = []
    for name in unmatched:
        for rule in compiled:
            name = rule.apply(name)
        targets.append(name)
    hits = [t for t in targets if t in missing]
    return len(hits) if len(hits) == len(set(hits)) else 0
