"""The repository owns its docs: docs/results.md and the README's headline are what the committed
JSONs generate, the README stays a short front door whose links resolve, and nothing points
outside the repository."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import results_md  # noqa: E402


def test_results_and_headline_regenerate_to_the_committed_files():
    assert (ROOT / "docs" / "results.md").read_text() == results_md.results_doc(), \
        "docs/results.md is stale: run python bench/results_md.py"
    assert (ROOT / "README.md").read_text() == results_md.readme_text(), \
        "the README headline is stale: run python bench/results_md.py"


def test_the_generator_notices_a_changed_result(tmp_path, monkeypatch):
    import json
    import shutil

    results = tmp_path / "results"
    shutil.copytree(results_md.RESULTS, results)
    f = results / "recipes_smollm2_probe.json"
    d = json.loads(f.read_text())
    d["rows"][0]["ppl"]["wiki"] += 1.0
    f.write_text(json.dumps(d))
    monkeypatch.setattr(results_md, "RESULTS", results)
    assert results_md.results_doc() != (ROOT / "docs" / "results.md").read_text()


def test_readme_is_a_front_door_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_nothing_points_outside_the_repository():
    files = [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *(ROOT / "python").rglob("*.py"),
             *(ROOT / "bench").glob("*.py"), *(ROOT / "scripts").glob("*"), *(ROOT / "tests").glob("*.py")]
    bad = [str(f.relative_to(ROOT)) for f in files if f.is_file() and f.name != "test_docs.py"
           and re.search(r"shared/docs|\.\./shared", f.read_text(errors="ignore"))]
    assert bad == []
