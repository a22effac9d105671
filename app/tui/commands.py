"""Command palette providers: jump to any tensor by name; open screens."""

from __future__ import annotations

import re
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from ckptscope.app.safe import printable, safe


def subsequence(query: str):  # type: ignore[no-untyped-def]
    """A matcher for names holding the query's characters in order, or None for an empty query.

    The fuzzy matcher only scores names that pass it, so a keystroke over a 100k-tensor MoE costs
    one regex per name: 0.05 s. Each step is `[^c]*+c` (possessive): a lazy `.*?` join
    backtracks on names that fail and took 0.5-5 s over the same names."""
    chars = [c for c in query if not c.isspace()]
    if not chars:
        return None
    return re.compile("".join(f"[^{re.escape(c)}]*+{re.escape(c)}" for c in chars), re.IGNORECASE).match


class TensorJumpProvider(Provider):
    """Fuzzy search over the tensor names of the checkpoint open in the inspect screen."""

    MAX_HITS = 40

    def _names(self) -> list[str]:
        """Sorted once per checkpoint and kept on the screen: 100k names per keystroke add up."""
        from .inspect import InspectScreen

        screen = self.screen  # the screen the palette was opened on (app.screen is the palette)
        if not isinstance(screen, InspectScreen):
            return []
        if screen.palette_names is None:
            screen.palette_names = sorted({t.global_name for t in screen.ckpt.tensors})
        return screen.palette_names

    async def discover(self) -> Hits:
        for name in self._names()[:10]:
            yield DiscoveryHit(safe(f"tensor: {name}", 1000), partial(self._jump, name), text=printable(name, 1000),
                               help="jump to this tensor")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        found = 0
        candidate = subsequence(query)
        for name in self._names():
            if candidate is not None and not candidate(name):
                continue
            score = matcher.match(name)
            if score > 0:
                shown = printable(name, 1000)  # a tensor name is checkpoint text: escaped, never parsed as markup
                yield Hit(score, matcher.highlight(shown), partial(self._jump, name), text=shown, help="jump to tensor")
                found += 1
                if found >= self.MAX_HITS * 5:
                    break

    def _jump(self, name: str) -> None:
        from .inspect import InspectScreen

        screen = self.screen
        if isinstance(screen, InspectScreen):
            screen.jump_to_tensor(name)
