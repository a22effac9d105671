"""Tokenizers carried into a converted HF folder, so it loads with `AutoTokenizer` at once.

Accepted sources (`--tokenizer PATH`): an HF tokenizer folder, a sentencepiece `tokenizer.model`
(file, or a folder holding one), a GPT-2 BPE `vocab.json` (+ `merges.txt` beside it, or a folder
holding both). Without `--tokenizer`, Megatron `args` name the tokenizer (`tokenizer_type`,
`tokenizer_model`, `vocab_file`, `merge_file`); those paths point at the training machine, so
they are resolved inside a folder the user names (`--tokenizer-root`), by relative path first,
then by file name. `--vocab-extra-ids N` appends `<extra_id_0..N-1>` and
`--override-special-tokens eos=<|im_end|> ...` sets special tokens, as Megatron-LLM's
converter does. The resulting size decides the HF vocabulary (see `vocab_action`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptscope.inspectors.errors import CheckpointError

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
    """A training-machine path found inside `root`: as a relative path, then by its trailing parts."""
    parts = Path(stored).parts
    for k in range(len(parts)):
        candidate = root.joinpath(*parts[k:]) if parts[k:] and parts[k] != "/" else None
        if candidate is not None and candidate.exists():
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


def write(source: TokenizerSource, folder: Path) -> None:
    """Put a complete HF tokenizer into `folder` (an unmodified HF folder is copied file by file)."""
    if source.kind == "hf" and not source.modified:
        for name in HF_FILES:
            src = source.path / name
            if src.is_file():
                shutil.copy2(src, folder / name)
        return
    load(source).save_pretrained(str(folder))


def vocab_action(stored_rows: int, tokenizer_size: int) -> str:
    """What fitting the model's vocabulary to the tokenizer does, in words for the plan."""
    if tokenizer_size == stored_rows:
        return f"vocab: {stored_rows} rows, the tokenizer's size"
    if tokenizer_size < stored_rows:
        return f"vocab: trimmed from {stored_rows} stored rows to the tokenizer's {tokenizer_size}"
    return (f"vocab: padded from {stored_rows} stored rows to the tokenizer's {tokenizer_size} "
            "(new rows repeat the last row, as Megatron pads)")
