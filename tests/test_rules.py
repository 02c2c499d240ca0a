"""Rule matching: globs, precedence, exclusions and the errors that catch typos."""

from __future__ import annotations

import pytest

import funcsparse as fs
from funcsparse._rules import assign_rules, glob_to_regex

PATHS = [
    "seq.0.weight",
    "seq.0.bias",
    "seq.2.weight",
    "seq.2.sub.weight",
    "linear1.weight",
    "head.weight",
]
A = fs.WeightNorm(sparsity=0.5)
B = fs.NearlyDiagonal(nearliness=3)


def keys_of(rules: dict[str, fs.MaskMethod | None]) -> list[str | None]:
    return [None if a is None else a.key for a in assign_rules(PATHS, rules, function="f")]


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ("seq.*.weight", ["seq.0.weight", "seq.2.weight"]),
        ("seq.**.weight", ["seq.0.weight", "seq.2.weight", "seq.2.sub.weight"]),
        (
            "**.weight",
            ["seq.0.weight", "seq.2.weight", "seq.2.sub.weight", "linear1.weight", "head.weight"],
        ),
        ("seq.?.bias", ["seq.0.bias"]),
        ("seq.[02].weight", ["seq.0.weight", "seq.2.weight"]),
        ("seq.[!0].weight", ["seq.2.weight"]),
        ("*1.weight", ["linear1.weight"]),
    ],
)
def test_glob_semantics(pattern: str, matches: list[str]) -> None:
    regex = glob_to_regex(pattern)
    assert [path for path in PATHS if regex.fullmatch(path)] == matches


def test_exact_path_beats_pattern() -> None:
    assert keys_of({"**.weight": A, "head.weight": B}) == [
        "**.weight",
        None,
        "**.weight",
        "**.weight",
        "**.weight",
        "head.weight",
    ]


def test_none_excludes() -> None:
    assert keys_of({"**.weight": A, "head.weight": None})[-1] is None


def test_two_patterns_on_one_leaf_is_an_error_naming_both() -> None:
    with pytest.raises(
        ValueError,
        match=r"f: patterns 'seq\.\*\.weight' and '\*\*\.weight' both match leaf 'seq\.0\.weight'",
    ):
        assign_rules(PATHS, {"seq.*.weight": A, "**.weight": B}, function="f")


def test_two_patterns_are_fine_when_an_exact_rule_decides() -> None:
    rules = {"seq.*.weight": A, "seq.0.*": B, "seq.0.weight": A}
    assert keys_of(rules)[:2] == ["seq.0.weight", "seq.0.*"]


@pytest.mark.parametrize("key", ["seq.0.wieght", "seq.*.wieght", "linear1"])
def test_rule_matching_nothing_is_an_error(key: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"f: rule (path|pattern) '{key.replace('.', '[.]').replace('*', '[*]')}' matches no leaf; the leaves are \['seq.0.weight'",
    ):
        assign_rules(PATHS, {key: A}, function="f")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([("seq.0.weight", A)], "rules must be a mapping"),
        ({1: A}, "rule keys must be str paths or patterns, got int 1"),
        (
            {"seq.0.weight": 0.5},
            "rule 'seq.0.weight' must map to a funcsparse method or None, got float 0.5",
        ),
    ],
)
def test_malformed_rules(rules: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        assign_rules(PATHS, rules, function="f")


@pytest.mark.parametrize(
    ("pattern", "paths", "matches"),
    [
        (
            "**.weight",
            ["weight", "a.weight", "a.b.weight", "aweight"],
            ["weight", "a.weight", "a.b.weight"],
        ),
        ("l[^0]", ["l0", "l1", "l^"], ["l0", "l^"]),  # '^' is a member, as in fnmatch
        ("a[!x]b", ["a.b", "ayb", "axb"], ["ayb"]),  # a class never matches the separator
        ("a[]", ["a[]", "a"], ["a[]"]),  # an unclosed '[' is literal
        ("[!]", ["[!]", "x"], ["[!]"]),
        ("x[]]", ["x]", "x["], ["x]"]),
    ],
)
def test_glob_edge_cases(pattern: str, paths: list[str], matches: list[str]) -> None:
    regex = glob_to_regex(pattern)
    assert [path for path in paths if regex.fullmatch(path)] == matches


def test_a_key_equal_to_a_path_is_exact_even_with_glob_characters() -> None:
    assignments = assign_rules(["emb[0].weight", "emb1.weight"], {"emb[0].weight": A}, function="f")
    assert [a is not None for a in assignments] == [True, False]


def test_bad_glob_is_a_value_error_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"f: rule pattern 'a\[z-a\]' is not a valid glob"):
        assign_rules(PATHS, {"a[z-a]": A}, function="f")


def test_a_pattern_overridden_everywhere_still_counts_as_matching() -> None:
    assignments = assign_rules(["head.weight"], {"*.weight": A, "head.weight": None}, function="f")
    assert assignments == [None]


# -- hostile rules and trees (issue 9) --------------------------------------------------------


def test_a_method_class_in_place_of_a_method_says_how_to_build_it() -> None:
    with pytest.raises(TypeError, match=r"rule 'seq.0.weight' .* \(a class: write WeightNorm"):
        assign_rules(PATHS, {"seq.0.weight": fs.WeightNorm}, function="f")


def test_messages_stay_short_for_huge_keys_and_values() -> None:
    key = "x" * 100_000
    with pytest.raises(ValueError, match="matches no leaf") as info:
        assign_rules(PATHS, {key: A}, function="f")
    assert len(str(info.value)) < 1000
    with pytest.raises(TypeError, match="must map to a funcsparse method") as info2:
        assign_rules(PATHS, {"head.weight": list(range(100_000))}, function="f")
    assert len(str(info2.value)) < 400


def test_overlapping_globs_name_both_and_an_exact_rule_settles_them() -> None:
    rules = {"seq.*.weight": A, "**.weight": B}
    with pytest.raises(ValueError, match=r"patterns 'seq.\*.weight' and '\*\*.weight' both"):
        assign_rules(PATHS, rules, function="f")
    settled = assign_rules(PATHS, {**rules, "seq.0.weight": None, "seq.2.weight": A}, function="f")
    assert [a.key if a else None for a in settled] == [
        None,
        None,
        "seq.2.weight",
        "**.weight",
        "**.weight",
        "**.weight",
    ]


def test_flatten_refuses_non_tensor_leaves_by_path_when_asked() -> None:
    import torch

    from funcsparse._tree import flatten_with_paths

    tree = {"a": (torch.zeros(2), [None, "w"]), "b": None}
    paths, leaves, _ = flatten_with_paths(tree)  # any leaf by default
    assert paths == ["a.0", "a.1.1"] and leaves[1] == "w"
    with pytest.raises(
        TypeError, match=r"f: expected a pytree of tensors .* got str 'w' at 'a.1.1'"
    ):
        flatten_with_paths(tree, function="f", tensors=True)
    with pytest.raises(TypeError, match=r"as the whole tree; pass dict\(model.named_parameters"):
        flatten_with_paths(torch.nn.Linear(2, 2), function="f", tensors=True)
    deep: object = torch.zeros(1)
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="f: the pytree is nested too deeply"):
        flatten_with_paths(deep, function="f")
