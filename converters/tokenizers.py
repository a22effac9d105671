"""Tokenizers carried into a converted HF folder, so it loads with `AutoTokenizer` at once.

Accepted sources (`--tokenizer PATH`): an HF tokenizer folder, a sentencepiece `tokenizer.model`
(file, or a folder holding one), a GPT-2 BPE `vocab.json` (+ `merges.txt` beside it, or a folder
holding both). Without `--tokenizer`, Megatron `args` name the tokenizer (`tokenizer_type`,
`tokenizer_model`, `vocab_file`, `merge_file`); those paths point at the training machine, so
they are resolved inside a folder the user names (`--tokenizer-root`), by relative path first,
then by file name. `--vocab-extra-ids N` appends `<extra_id_0..N-1>` and
`--override-special-tokens eos=<|im_end|> ...` sets special tokens, as Megatron-LLM's
converter does.

The resulting size decides the output vocabulary for every source (`VocabFit`): the stored
rows of the embedding and the untied LM head are trimmed to it (dropping Megatron's
`make_vocab_size_divisible_by` padding, or rows the tokenizer does not have), or padded up to
it. New rows are the MEAN of the trained rows (per tensor, in fp32), not zeros and not a copy of
the last row: a mean row gives a new token an average embedding and an average logit, so it
neither dominates the softmax nor clones an arbitrary (often special) token; it is what
transformers' `resize_token_embeddings(mean_resizing=True)` centres on, made deterministic so
conversions stay reproducible. Megatron targets still pad to `make_vocab_size_divisible_by × TP`
afterwards, repeating the last row as Megatron's saver does (those rows are never real tokens).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ckptscope.inspectors.errors import CheckpointError

from .sources.base import PRE, Accounting, CanonicalSource

HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
            "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
SPECIAL_KEYS = ("bos", "eos", "unk", "pad", "sep", "cls", "mask")
SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer", "Llama3Tokenizer")


@dataclass
class TokenizerSource:
    """Where the tokenizer comes from and what to change in it."""

    path: Path
    kind: str  # hf | sentencepiece | gpt2-bpe
    extra_ids: int = 0
    overrides: dict[str, str] = field(default_factory=dict)  # e.g. {"eos": "<|im_end|>"}
    origin: str = "--tokenizer"
    merges: Path | None = None  # gpt2-bpe: merges file (default: merges.txt beside the vocab)

    @property
    def modified(self) -> bool:
        return bool(self.extra_ids or self.overrides)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`eos=<|im_end|>` items -> {"eos": "<|im_end|>"} (keys: bos eos unk pad sep cls mask)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removesuffix("_token")
        if not sep or key not in SPECIAL_KEYS or not value:
            raise ValueError(f"--override-special-tokens {item!r}: expected KEY=TOKEN with KEY one of {', '.join(SPECIAL_KEYS)}")
        out[key] = value
    return out


def classify(path: Path) -> tuple[Path, str]:
    """(path to load, kind) for a user-given tokenizer path."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.name == "vocab.json" or path.suffix == ".json" and (path.parent / "merges.txt").is_file():
            return path, "gpt2-bpe"
        if path.suffix == ".model":
            return path, "sentencepiece"
        raise CheckpointError(path, "not a tokenizer file (expected tokenizer.model, vocab.json or an HF tokenizer folder)")
    if not path.is_dir():
        raise CheckpointError(path, "tokenizer path does not exist")
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        return path, "hf"
    if (path / "tokenizer.model").is_file():
        return path / "tokenizer.model", "sentencepiece"
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return path / "vocab.json", "gpt2-bpe"
    raise CheckpointError(path, "no tokenizer.json, tokenizer.model or vocab.json + merges.txt in this folder")


def _find(root: Path, stored: str) -> Path | None:
    """A training-machine path found inside `root`: as a relative path, then by its trailing parts.

    The path comes from the checkpoint: `..` parts are never followed, and a candidate whose real
    path (symlinks resolved) leaves `root`, or that is not a regular file or folder, is refused.
    """
    parts = Path(stored).parts
    base = Path(os.path.realpath(root))
    for k in range(len(parts)):
        tail = parts[k:]
        if not tail or tail[0] == "/" or ".." in tail:
            continue
        candidate = root.joinpath(*tail)
        if not os.path.lexists(candidate):
            continue
        resolved = Path(os.path.realpath(candidate))
        if not resolved.is_relative_to(base):
            raise CheckpointError(candidate, f"tokenizer path {stored} from the Megatron args leads outside --tokenizer-root {root}")
        if not (resolved.is_file() or resolved.is_dir()):
            raise CheckpointError(candidate, "tokenizer path is not a regular file or folder")
        return candidate
    return None


def from_megatron_args(args: dict[str, Any], root: Path) -> tuple[Path, str, Path | None] | None:
    """The tokenizer a Megatron run trained with, resolved inside `root` (None: args name none)."""
    kind = str(args.get("tokenizer_type") or "")
    if kind == "GPT2BPETokenizer" or (args.get("vocab_file") and args.get("merge_file")):
        vocab = _find(root, str(args.get("vocab_file") or "vocab.json"))
        merges = _find(root, str(args.get("merge_file") or "merges.txt"))
        if vocab is None or merges is None:
            raise CheckpointError(root, f"args name {args.get('vocab_file')} / {args.get('merge_file')}; not found in this folder")
        return vocab, "gpt2-bpe", merges
    model = args.get("tokenizer_model")
    if not model:
        return None
    found = _find(root, str(model))
    if found is None:
        raise CheckpointError(root, f"args name tokenizer_model {model}; not found in this folder")
    if kind in SENTENCEPIECE_TYPES or found.suffix == ".model":
        return (found if found.is_file() else found / "tokenizer.model"), "sentencepiece", None
    return (*classify(found), None)


def load(source: TokenizerSource) -> Any:
    """A transformers tokenizer for the source, with extra ids and special-token overrides applied."""
    from transformers import AutoTokenizer, GPT2Tokenizer, LlamaTokenizer

    try:
        if source.kind == "hf":
            tok = AutoTokenizer.from_pretrained(str(source.path), local_files_only=True)
        elif source.kind == "gpt2-bpe":
            merges = source.merges or source.path.parent / "merges.txt"
            tok = GPT2Tokenizer(vocab=str(source.path), merges=str(merges))
        else:
            tok = LlamaTokenizer.from_pretrained(str(_sentencepiece_folder(source.path)), local_files_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is a bad input
        hint = " (converting tokenizer.model needs the sentencepiece and protobuf packages)" if source.kind == "sentencepiece" else ""
        raise CheckpointError(source.path, f"cannot load tokenizer: {str(exc).splitlines()[0]}{hint}") from None
    if source.extra_ids:
        tok.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(source.extra_ids)]},
                               replace_extra_special_tokens=False)
    if source.overrides:
        tok.add_special_tokens({f"{k}_token": v for k, v in source.overrides.items()})
    return tok


def _sentencepiece_folder(model: Path) -> Path:
    """transformers converts a sentencepiece model found as `tokenizer.model` in a folder."""
    if model.name == "tokenizer.model":
        return model.parent
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ckptscope-spm-"))
    shutil.copy2(model, folder / "tokenizer.model")
    return folder


def size(source: TokenizerSource) -> int:
    return len(load(source))


def write(source: TokenizerSource, folder: Path, copy_into: Callable[[Path, Path], Any] = shutil.copy2) -> None:
    """Put a complete HF tokenizer into `folder` (an unmodified HF folder is copied file by file,
    with the writer's `copy_into`, which also streams into a remote destination)."""
    if source.kind == "hf" and not source.modified:
        for name in HF_FILES:
            src = source.path / name
            if src.is_file():
                copy_into(src, folder / name)
        return
    if not hasattr(folder, "open_write"):  # a local folder (a remote destination's paths stream: remote_output.OutPath)
        load(source).save_pretrained(str(folder))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ckptscope-tokenizer-") as staged:  # a remote output: saved, then uploaded
        load(source).save_pretrained(staged)
        for path in sorted(Path(staged).iterdir()):
            if path.is_file():
                copy_into(path, folder / path.name)


def vocab_action(stored_rows: int, tokenizer_size: int, real_rows: int | None = None) -> str:
    """What fitting the model's vocabulary to the tokenizer does, in words for the plan.
    `stored_rows`: rows on disk (Megatron: padded); `real_rows`: rows the source calls trained."""
    real = min(real_rows or stored_rows, stored_rows)
    if tokenizer_size == stored_rows == real:
        return f"vocab: {stored_rows} rows, the tokenizer's size"
    if tokenizer_size <= real:
        return (f"vocab: trimmed from {stored_rows} stored rows to the tokenizer's {tokenizer_size} "
                f"(rows {tokenizer_size}..{stored_rows - 1} dropped)")
    dropped = f", {stored_rows - real} padding rows dropped" if real < stored_rows else ""
    base = f"{stored_rows} stored rows" if real == stored_rows else f"{real} trained rows ({stored_rows} stored)"
    return (f"vocab: padded from {base} to the tokenizer's {tokenizer_size}{dropped} "
            f"({tokenizer_size - real} new rows: mean of the {real} trained rows)")


# ----- fitting a source's vocabulary to the tokenizer ------------------------------------------
VOCAB_ROWS = ("embed", "lm_head")  # canonical tensors with one row per token


def fit_rows(t: torch.Tensor, rows: int, mean_of: int | None = None) -> torch.Tensor:
    """Trim `t` to its first `rows` rows, or pad it with rows equal to the mean of its first
    `mean_of` rows (default: all), computed in fp32 and cast back (see the module docstring)."""
    if t.shape[0] >= rows:
        return t[:rows].contiguous()
    base = t[: mean_of or t.shape[0]]
    mean = base.to(torch.float32).mean(dim=0, keepdim=True).to(t.dtype)
    return torch.cat([t, mean.expand(rows - t.shape[0], *t.shape[1:])], dim=0)


class VocabFit(CanonicalSource):
    """A source whose embedding / LM head rows are trimmed or padded to `size` as they stream.

    Everything else (accounting, other groups, notes) is the wrapped source's; only the
    embedding group and the head group change, one group at a time, so nothing extra is held."""

    def __init__(self, base: CanonicalSource, size: int, note: str) -> None:
        self.base = base
        self.kind = base.kind
        self.ckpt = base.ckpt
        self.rows = base.spec.vocab  # rows the source yields (true vocab, or all stored rows when unknown)
        self.stored = max(base.spec.padded_vocab or self.rows, self.rows)
        self.size = size
        self.spec = base.spec.with_(vocab=size, vocab_note=note,
                                    padded_vocab=self.stored if self.stored > size else None)
        self._resized: set[str] | None = None  # stored names whose rows change

    def read(self, group: int) -> dict[str, torch.Tensor]:
        tensors = self.base.read(group)
        if group == PRE or group >= self.spec.layers:
            for name in VOCAB_ROWS:
                if name in tensors:
                    tensors[name] = fit_rows(tensors[name], self.size, self.rows)
        return tensors

    def account(self, user_ignores=()) -> Accounting:  # type: ignore[no-untyped-def]
        return self.base.account(user_ignores)

    def notes(self) -> list[str]:
        return self.base.notes()

    def stored_as_canonical(self, name: str) -> bool:
        """Resized rows are never stored as is."""
        as_is = getattr(self.base, "stored_as_canonical", None)
        if as_is is None or not as_is(name):
            return False
        if self._resized is None:  # accounted once: diff asks per tensor
            self._resized = {n for n, canon in self.base.account().mapped.items() if any(c in VOCAB_ROWS for c in canon)}
        return name not in self._resized

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        # other public source attributes (index, variant, inner...) are the wrapped source's;
        # private ones (the `get` cache) stay this wrapper's own
        if name == "base" or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.base, name)
