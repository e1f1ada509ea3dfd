import pytest
import yaml

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


def test_sources_show_only_the_fields_their_kind_reads_and_round_trip(tmp_path):
    r = load_recipe(None, [f"corpus.sources=[{{kind: txt, path: '{tmp_path}'}}, {{kind: shakespeare}}, "
                           f"{{kind: jsonl, path: a.jsonl, editions: [modern]}}]"])
    txt, shakespeare, jsonl = yaml.safe_load(r.to_yaml())["corpus"]["sources"]
    assert "editions" not in txt and "text_field" not in txt and "id_field" not in txt
    assert "path" not in shakespeare and "text_field" not in shakespeare and shakespeare["editions"]
    assert jsonl["editions"] == ["modern"] and jsonl["text_field"] == "text"  # set off its default: kept
    p = tmp_path / "resolved.yaml"
    p.write_text(r.to_yaml())
    assert load_recipe(p) == r
    assert r.warnings() == ["corpus.sources.2.editions is set but a 'jsonl' source does not read it (used by "
                            "shakespeare); it is ignored"]


def test_recipe_name_defaults_to_the_file_stem(tmp_path):
    p = tmp_path / "corpus-a.yaml"
    p.write_text("tokenizer: {vocab_size: 1024}\n")
    assert load_recipe(p).name == "corpus-a" and load_recipe("curation").name == "curation"
    assert load_recipe("demo").name == "demo"  # an explicit name: is kept


def test_readme_minimal_recipes_are_valid(tmp_path):
    """The README's minimal recipes (own txt folder, own JSONL) load, validate and get their own run folders."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("**Your own text: a minimal recipe.**")[1].split("**Stages.**")[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    kinds = []
    for block, stem in zip(blocks, ("notes", "articles"), strict=True):
        p = tmp_path / f"{stem}.yaml"
        p.write_text(block)
        r = load_recipe(p)
        assert r.name == stem and f"runs/{stem}" in block
        assert r.warnings() == []
        kinds.append(r.corpus.sources[0].kind)
    assert kinds == ["txt", "jsonl"]
