"""Plain torch DCP checkpoints from FSDP trainers as canonical tensors.

Hugging Face Accelerate saves `pytorch_model_fsdp_0/` with the HF model's own names under a
`model.` wrapper key (`{"model": state_dict}`); torchtitan saves `step-N/` with its own Llama-style
names (`tok_embeddings`, `layers.{i}.attention.wq`, `feed_forward.w1`, ...) beside optimizer,
scheduler and dataloader state. Both are the family's HF table seen through a naming style: the
HF style strips the wrapper prefix, the torchtitan style renames module paths. Tensors are
global (DCP stores every shard as a chunk of the full tensor), so a group is read whole.
The architecture comes from `--config` or a `config.json` found beside the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from ckptscope.inspectors.model import Checkpoint

from .. import families
from ..spec import ModelSpec, SpecError
from .base import Accounting, CanonicalSource, groups

NEEDS_CONFIG = "torch DCP checkpoints carry no architecture: pass --config with the model's HF config.json"

# torchtitan's names for the Llama-style block (llama3 / qwen3 models): the HF family's names with
# these module paths swapped
TORCHTITAN_PREFIXES = (("model.embed_tokens.", "tok_embeddings."), ("model.norm.", "norm."), ("lm_head.", "output."),
                       ("model.layers.", "layers."))
TORCHTITAN_MODULES = (
    (".self_attn.q_proj.", ".attention.wq."), (".self_attn.k_proj.", ".attention.wk."),
    (".self_attn.v_proj.", ".attention.wv."), (".self_attn.o_proj.", ".attention.wo."),
    (".self_attn.q_norm.", ".attention.q_norm."), (".self_attn.k_norm.", ".attention.k_norm."),
    (".input_layernorm.", ".attention_norm."), (".post_attention_layernorm.", ".ffn_norm."),
    (".mlp.gate_proj.", ".feed_forward.w1."), (".mlp.down_proj.", ".feed_forward.w2."), (".mlp.up_proj.", ".feed_forward.w3."),
)
WRAPPER_PREFIXES = ("", "model.", "module.", "_orig_mod.", "model._orig_mod.")
IGNORED = (r"^optimizer\.", r"^(lr_scheduler|dataloader|train_state)", r"(^|\.)inv_freq$", r"(^|\.)freqs_cis$")


def torchtitan_name(hf_name: str) -> str:
    for old, new in TORCHTITAN_PREFIXES:
        if hf_name.startswith(old):
            hf_name = new + hf_name[len(old):]
            break
    for old, new in TORCHTITAN_MODULES:
        hf_name = hf_name.replace(old, new)
    return hf_name


class DcpSource(CanonicalSource):
    kind = "dcp"
    needs_config = NEEDS_CONFIG

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "") -> None:
        if spec is None:
            raise SpecError(self.needs_config)
        self.ckpt, self.spec = ckpt, spec
        self.index = {t.name: t for t in ckpt.model_tensors()}
        entries = [e for e in families.hf_entries(spec) if e.canon]
        self.style, self.names = self._naming(entries)
        self.entries = {g: [e for e in entries if e.group == g] for g in groups(spec)}
        self.shapes = spec.canonical_shapes()

    def _naming(self, entries: list[families.HfEntry]) -> tuple[str, dict[str, str]]:
        """The naming style and wrapper prefix under which every HF entry is stored."""
        styles = {"hf": lambda n: n, "torchtitan": torchtitan_name}
        best: tuple[int, str, dict[str, str]] = (-1, "hf", {})
        for style, rename in styles.items():
            for prefix in WRAPPER_PREFIXES:
                names = {e.name: prefix + rename(e.name) for e in entries}
                found = sum(n in self.index for n in names.values())
                if found > best[0]:
                    best = (found, f"{style}" + (f" (under `{prefix[:-1]}`)" if prefix else ""), names)
        return best[1], best[2]

    def read(self, group: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for entry in self.entries[group]:
            stored = self.names[entry.name]
            if stored not in self.index:
                raise SpecError(f"{self.ckpt.path}: missing tensor {stored}")
            parts = entry.op.unpack(self.ckpt.load(self.index[stored]), [self.shapes[c] for c in entry.canon], self.spec)
            out.update(zip(entry.canon, parts))
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected = {self.names[e.name]: list(e.canon) for g in groups(self.spec) for e in self.entries[g]}
        rules = [*IGNORED, *families.hf_ignored(self.spec)]
        acc = Accounting()
        acc.settle(self.index, expected, rules, user_ignores)
        return acc

    def notes(self) -> list[str]:
        return [f"DCP naming: {self.style}"]
