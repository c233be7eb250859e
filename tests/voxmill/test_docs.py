"""Docs read from the catalogue: the README's model table is the generated one."""

from pathlib import Path

from voxmill.catalog import model_table_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_readme_model_table_matches_catalogue():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- model-table:start -->") + len("<!-- model-table:start -->")
    end = readme.index("<!-- model-table:end -->")
    assert readme[start:end].strip() == model_table_markdown().strip(), (
        "README model table is stale: regenerate it from voxmill.catalog.model_table_markdown()"
    )
