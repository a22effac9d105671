"""The lazy module tree: totals known at once, children grouped only when asked for."""

from __future__ import annotations

from ckptscope.app.tui.commands import subsequence
from ckptscope.inspectors.model import Ranks, TensorInfo
from ckptscope.inspectors.tree import NON_MODEL, build_tree


def _t(name: str, shape: tuple[int, ...], tp: int | None = None, group: str = "model", dtype: str = "float32") -> TensorInfo:
    return TensorInfo(name, shape, dtype, f"rank{tp}.pt", Ranks(tp=tp), group=group)


TENSORS = [
    _t("decoder.layers.0.mlp.fc1.weight", (4, 8), tp=0),
    _t("decoder.layers.0.mlp.fc1.weight", (4, 8), tp=1),  # second TP shard: one logical tensor
    _t("decoder.layers.10.mlp.fc1.weight", (4, 8), tp=0),
    _t("decoder.layers.2.mlp.fc1.weight", (4, 8), tp=0, dtype="bfloat16"),
    _t("embedding.word_embeddings.weight", (16, 8), tp=0),
    _t("optimizer.state.0.exp_avg", (4, 8), group="optimizer"),
]


def test_totals_before_any_grouping_and_children_on_demand() -> None:
    root = build_tree(TENSORS, separate_non_model=True)
    # the root counts the model alone: 4 logical tensors, both TP shards' elements
    assert (root.tensors, root.numel, root.nbytes) == (4, 4 * 32 + 128, 3 * 128 + 64 + 512)
    layers = root.find("decoder.layers")
    assert layers is not None and [c.name for c in layers.sorted_children()] == ["0", "2", "10"]  # natural order
    leaf = root.find("decoder.layers.0.mlp.fc1.weight")
    assert leaf is not None and leaf.is_leaf and len(leaf.shards) == 2 and leaf.tensors == 1
    assert leaf.path == "decoder.layers.0.mlp.fc1.weight"
    assert {n.path for n in root.iter_leaves()} >= {"embedding.word_embeddings.weight", "decoder.layers.10.mlp.fc1.weight"}


def test_non_model_tensors_sit_under_their_own_node_with_their_own_paths() -> None:
    root = build_tree(TENSORS, separate_non_model=True)
    assert root.sorted_children()[-1].name == NON_MODEL  # sorted last
    other = root.children[NON_MODEL]
    assert other.tensors == 1 and other.path == NON_MODEL
    leaf = other.find("optimizer.state.0.exp_avg")
    assert leaf is not None and leaf.path == "optimizer.state.0.exp_avg" and leaf.shards[0].group == "optimizer"
    flat = build_tree(TENSORS)  # without separation everything is one namespace
    assert NON_MODEL not in flat.children and flat.tensors == 5


def test_a_name_that_is_also_a_prefix_is_leaf_and_branch() -> None:
    root = build_tree([_t("a.b", (2,)), _t("a.b.c", (3,))])
    node = root.find("a.b")
    assert node is not None and [t.name for t in node.shards] == ["a.b"] and node.has_children and not node.is_leaf
    assert (node.tensors, node.numel) == (2, 5)


def test_palette_prefilter_is_an_in_order_character_match() -> None:
    match = subsequence("l200 exp77 w2")
    assert match("model.layers.200.block_sparse_moe.experts.77.w2.weight")
    assert not match("model.layers.201.block_sparse_moe.experts.77.w1.weight")
    assert subsequence("LM_HEAD")("lm_head.weight")  # case-insensitive
    assert subsequence("a]b^c-d.")("x a ] b ^ c - d .")  # regex metacharacters are literal
    assert subsequence("   ") is None


def test_totals_over_shards_say_they_count_stored_elements() -> None:
    """A subtree whose elements include a second rank's shard or copy says "stored elements" (the
    header's parameter count is the logical one); a subtree of single tensors says "elements"."""
    root = build_tree(TENSORS, separate_non_model=True)
    assert root.pieces == 5 and root.elements_label == "stored elements"
    assert root.find("decoder.layers.0").elements_label == "stored elements"
    assert root.find("decoder.layers.10").elements_label == "elements"
    assert root.children[NON_MODEL].elements_label == "elements"
