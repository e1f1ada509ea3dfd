import pytest

from kiln.recipe import Recipe, RecipeError, apply_override, load_recipe, resolve_recipe_path


def test_demo_recipe_loads_and_overrides():
    r = load_recipe("demo", ["train.steps=50", "model.n_layer=2"])
    assert isinstance(r, Recipe)
    assert r.train.steps == 50 and r.model.n_layer == 2
    assert r.corpus.sources[0].kind == "shakespeare"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr=-1", "train.lr: Input should be greater than 0, got -1"),
        ("train.nope=1", "train.nope: unknown field"),
        ("model.n_head=5", "model: d_model (192) must be divisible by n_head (5)"),
        ("data.packing=random", "data.packing: Input should be 'best_fit' or 'concat', got 'random'"),
        ("corpus.sources.0.kind=xml", "corpus.sources.0.kind"),
        ("nosection.x=1", "nosection: unknown field"),
    ],
)
def test_invalid_fields_are_named(override, expected):
    with pytest.raises(RecipeError) as info:
        load_recipe("demo", [override])
    assert expected in str(info.value)


def test_file_source_needs_path():
    with pytest.raises(RecipeError, match="needs a `path`"):
        load_recipe(None, ["corpus.sources=[{kind: jsonl}]"])


def test_override_syntax_errors():
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_override({}, "train.steps")
    with pytest.raises(RecipeError, match="not a valid list index"):
        load_recipe("demo", ["corpus.sources.5.kind=txt"])


def test_yaml_values_are_parsed():
    tree: dict = {}
    apply_override(tree, "train.grad_clip=null")
    apply_override(tree, "generate.prompts=[a, b]")
    assert tree == {"train": {"grad_clip": None}, "generate": {"prompts": ["a", "b"]}}


def test_unknown_recipe_lists_builtins(tmp_path):
    with pytest.raises(RecipeError, match="demo"):
        resolve_recipe_path(tmp_path / "missing.yaml")


def test_bad_yaml_names_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train: [unclosed")
    with pytest.raises(RecipeError, match=str(p)):
        load_recipe(p)


def test_fingerprint_changes_with_config():
    a, b = load_recipe("demo"), load_recipe("demo", ["train.lr=0.001"])
    assert a.train.fingerprint() != b.train.fingerprint()
    assert a.model.fingerprint() == b.model.fingerprint()


def test_resolved_yaml_round_trips(tmp_path):
    r = load_recipe("demo", ["train.steps=7"])
    p = tmp_path / "resolved.yaml"
    p.write_text(r.to_yaml())
    assert load_recipe(p) == r
