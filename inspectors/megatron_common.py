"""Shared Megatron facts: the tracker file, iteration folders, args and layer numbering.

Used by both Megatron readers (`torch` and `torch_dist`) and by Megatron-DeepSpeed roots.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .dtypes import DType
from .errors import CheckpointError
from .files import parse_iteration, read_side_text
from .safe_pickle import Placeholder, short_repr

TRACKER = "latest_checkpointed_iteration.txt"
ITER_RE = re.compile(r"^iter_([0-9]{7,12})$")  # ASCII only: \\d also matches "١"
LAYER_RE = re.compile(r"(?<![^.])layers\.(\d+)\.")
LOCAL_EXPERT_RE = re.compile(r"(local_experts\.)(\d+)(\.)")
GROUPED_EXPERT_RE = re.compile(r"(experts\.linear_fc[12]\.(?:weight|bias))(\d+)$")


def iteration_folder_name(iteration: int | str) -> str:
    return "release" if iteration == "release" else f"iter_{int(iteration):07d}"


def list_iterations(root: Path) -> list[int | str]:
    found: list[int | str] = []
    for child in root.iterdir():
        m = ITER_RE.match(child.name)
        if m and child.is_dir():
            found.append(int(m.group(1)))
    found.sort(key=lambda x: int(x))
    if (root / "release").is_dir():
        found.append("release")
    return found


def read_tracker(root: Path) -> int | str:
    """Parse `latest_checkpointed_iteration.txt` (a number or `release`)."""
    tracker = root / TRACKER
    text = read_side_text(tracker, "tracker", "tracker").strip()
    if text == "release":
        return "release"
    iteration = parse_iteration(tracker, text)
    if iteration is None:
        raise CheckpointError(tracker, f"tracker must hold an iteration number or 'release' (at most 12 ASCII digits), found {text[:40]!r}")
    return iteration


def resolve_root(root: Path) -> tuple[Path, int | str, list[int | str], list[str]]:
    """Pick the iteration folder a root points at. Returns (folder, iteration, all, warnings)."""
    warnings: list[str] = []
    iterations = list_iterations(root)
    if (root / TRACKER).exists():
        iteration = read_tracker(root)
        folder = root / iteration_folder_name(iteration)
        if not folder.is_dir():
            raise CheckpointError(
                root / TRACKER,
                f"points to {folder.name}, which does not exist"
                + (f" (present: {', '.join(iteration_folder_name(i) for i in iterations[-4:])})" if iterations else ""),
            )
        if iterations and iteration != iterations[-1] and iteration != "release":
            warnings.append(f"tracker points to iteration {iteration}, but a newer folder exists: {iteration_folder_name(iterations[-1])}")
        return folder, iteration, iterations, warnings
    if not iterations:
        raise CheckpointError(root, "no iteration folders (iter_XXXXXXX or release)")
    warnings.append(f"no {TRACKER}; using the newest iteration folder")
    latest = iterations[-1]
    return root / iteration_folder_name(latest), latest, iterations, warnings


def iteration_of_folder(folder: Path) -> int | str | None:
    m = ITER_RE.match(folder.name)
    if m:
        return int(m.group(1))
    return "release" if folder.name == "release" else None


def args_to_dict(args: Any) -> dict[str, Any]:
    """Megatron `args` Namespace as a plain dict; placeholders become readable strings."""
    if isinstance(args, argparse.Namespace):
        raw = vars(args)
    elif isinstance(args, dict):
        raw = args
    elif isinstance(args, Placeholder) and isinstance(args.state, dict):
        raw = args.state
    else:
        return {}
    budget = [MAX_PLAIN_ITEMS]
    return {_plain_key(k): plain_value(v, 0, budget) for k, v in list(raw.items())[:MAX_PLAIN_ITEMS]}


MAX_PLAIN_ITEMS = 10_000


def _plain_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (float, bool)) or key is None or (isinstance(key, int) and key.bit_length() <= 63):
        return str(key)
    return short_repr(key, 1)


def plain_value(value: Any, depth: int = 0, _budget: list[int] | None = None) -> Any:
    """Make a pickled value printable/JSON-able without losing what it was.

    Bounded: shared containers (pickle memo) could otherwise expand exponentially, a huge int
    cannot be printed (`sys.get_int_max_str_digits`), a deep structure cannot be repr'd.
    """
    budget = [MAX_PLAIN_ITEMS] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        return "<...>"
    if depth > 8:
        return short_repr(value, 2)[:200]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 63:
        return short_repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, DType) or (type(value).__name__ == "dtype" and type(value).__module__ == "torch"):
        return str(value)
    if isinstance(value, Placeholder):
        return f"<{value.describe()}>"
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain_value(v, depth + 1, budget) for v in list(value)[: max(budget[0], 0)]]
    if isinstance(value, dict):
        return {_plain_key(k): plain_value(v, depth + 1, budget)
                for k, v in list(value.items())[: max(budget[0], 0)]}
    if isinstance(value, argparse.Namespace):
        return plain_value(vars(value), depth, budget)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return short_repr(value, 2)[:200]


def get_arg(args: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if args.get(name) is not None:
            return args[name]
    return default


MAX_VIRTUAL_STAGES = 128  # virtual pipeline chunks per stage (real runs use a handful; <= layers / PP)
MAX_DATA_PARALLEL = 1 << 20
MAX_MODEL_PARALLEL = 4096  # TP, PP or EP of any run; beyond it an args value is corrupt or hostile


def parallel_size(args: dict[str, Any], names: tuple[str, ...], limit: int, blame: str | Path, why: str, default: int = 1,
                  where: str = "args") -> int:
    """A layout number from args: an int from 1 to `limit`, where the limit comes from what is on
    disk (a billion pipeline stages would size loops and tables; -1 would print as TP-1)."""
    value = get_arg(args, *names, default=None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise CheckpointError(blame, f"{where} {names[0]} = {short_repr(value, 1)[:40]} is not a parallel size from 1 to {limit} ({why})")
    return value


def rank_folder_name(tp: int, pp: int, ep: int, *, pp_size: int, ep_size: int) -> str:
    """A rank's folder in the `torch` format: `mp_rank_TT`, `_PPP` with pipeline stages, `_EEE`
    with expert ranks (megatron/training/checkpointing.py `get_checkpoint_name`)."""
    return f"mp_rank_{tp:02d}" + (f"_{pp:03d}" if pp_size > 1 else "") + (f"_{ep:03d}" if ep_size > 1 else "")


def legacy_rank_folders(tp: int, pp: int, ep: int, etp: int | None = None) -> list[tuple[int, int, int]]:
    """(tp, pp, ep) of every rank folder megatron-core writes in the `torch` format.

    Only ranks whose expert-data-parallel rank is 0 save (megatron/training/checkpointing.py), and
    a folder is named by the rank's dense TP rank and its EP rank. In megatron-core's default
    order (`tp-cp-ep-dp-pp` for dense ranks, `tp-ep-dp-pp` with the experts' own TP for expert
    ranks; parallel_state.py), the saving ranks of a stage are its first `etp * ep`: local rank l
    has TP rank l % tp and EP rank (l // etp) % ep. With `etp == tp` that is every (tp, ep) pair;
    with a smaller `etp` (`--expert-tensor-parallel-size 1` beside TP 2) only some of them, each
    holding its experts unsplit (split `etp` ways). A TP rank no saving rank has was never written."""
    return sorted(set(iter_legacy_rank_folders(tp, pp, ep, etp)), key=lambda r: (r[1], r[2], r[0]))


def iter_legacy_rank_folders(tp: int, pp: int, ep: int, etp: int | None = None) -> Iterator[tuple[int, int, int]]:
    """`legacy_rank_folders` one by one, repeats included, for a check that stops at the first
    folder missing from disk (args may claim sizes whose product no folder listing could hold)."""
    etp = etp or tp
    for stage in range(pp):
        for rank in range(etp * ep):
            yield rank % tp, stage, (rank // etp) % ep


def layer_offsets(args: dict[str, Any], pp: int, vpp: int) -> dict[tuple[int, int], int]:
    """Global index of local layer 0 for each (pp_rank, vpp_rank), as Megatron computes it.

    Handles even splits, virtual pipeline chunks and explicit first/last stage sizes
    (`decoder_first_pipeline_num_layers` / `decoder_last_pipeline_num_layers`).
    """
    layers = int(get_arg(args, "num_layers", "encoder_num_layers", default=0) or 0)
    first = args.get("decoder_first_pipeline_num_layers")
    last = args.get("decoder_last_pipeline_num_layers")
    stages = pp * vpp
    if first or last:
        middle_layers = layers - (first or 0) - (last or 0)
        middle_stages = pp - (1 if first else 0) - (1 if last else 0)
        per_middle = middle_layers // middle_stages if middle_stages > 0 else 0
        sizes = []
        for p in range(pp):
            if p == 0 and first:
                sizes.append(int(first))
            elif p == pp - 1 and last:
                sizes.append(int(last))
            else:
                sizes.append(per_middle)
        offsets = {}
        acc = 0
        for p, n in enumerate(sizes):
            offsets[(p, 0)] = acc
            acc += n
        return offsets
    per_stage = layers // stages if stages and layers else 0
    return {(p, v): (v * pp + p) * per_stage for p in range(pp) for v in range(vpp)}


def globalise_name(name: str, layer_offset: int, expert_offset: int) -> str:
    """Rename pipeline-local layer and EP-local expert numbers to global ones (megatron-core numbers
    its multi-token-prediction modules, `mtp.layers.{k}`, from 0 on the stage that holds them all)."""
    if layer_offset and not name.startswith("mtp."):
        name = LAYER_RE.sub(lambda m: f"layers.{int(m.group(1)) + layer_offset}.", name, count=1)
    if expert_offset:
        name = LOCAL_EXPERT_RE.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + expert_offset}{m.group(3)}", name)
        name = GROUPED_EXPERT_RE.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + expert_offset}", name)
    return name


ARCH_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "group_query_attention",
    "num_query_groups", "kv_channels", "seq_length", "max_position_embeddings", "padded_vocab_size",
    "vocab_size", "make_vocab_size_divisible_by", "normalization", "norm_epsilon", "swiglu",
    "apply_layernorm_1p", "add_bias_linear", "add_qkv_bias", "qk_layernorm",
    "untie_embeddings_and_output_weights", "position_embedding_type", "rotary_base", "rotary_percent",
    "rotary_interleaved", "use_rope_scaling", "rope_scaling_factor", "num_experts", "moe_router_topk",
    "moe_ffn_hidden_size", "moe_grouped_gemm", "params_dtype", "bf16", "fp16",
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size",
    "virtual_pipeline_model_parallel_size", "transformer_impl", "tokenizer_type", "ckpt_format",
)
