"""Command palette providers: jump to any tensor by name; open screens."""

from __future__ import annotations

import re
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


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
            yield DiscoveryHit(f"tensor: {name}", partial(self._jump, name), help="jump to this tensor")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        found = 0
        # The fuzzy matcher only scores names holding the query's characters in order (one C-level
        # regex pass over all names), so a keystroke stays cheap on a 100k-tensor MoE.
        letters = [re.escape(ch) for ch in query.replace(" ", "")]
        candidate = re.compile(".*?".join(letters), re.IGNORECASE).search if letters else None
        for name in self._names():
            if candidate is not None and not candidate(name):
                continue
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self._jump, name), help="jump to tensor")
                found += 1
                if found >= self.MAX_HITS * 5:
                    break

    def _jump(self, name: str) -> None:
        from .inspect import InspectScreen

        screen = self.screen
        if isinstance(screen, InspectScreen):
            screen.jump_to_tensor(name)
