"""Provenance: the commit label says "-dirty" for changed code or notebook sources, not for a run's outputs."""

import json
import shutil
import subprocess

import pytest

from tdpmlib.workflow import results

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def notebook(source: str, output: str = "") -> str:
    cells = [dict(cell_type="markdown", id="a", metadata={}, source=["# Title"]),
             dict(cell_type="code", id="b", metadata={}, execution_count=1, source=[source],
                  outputs=[dict(output_type="stream", name="stdout", text=[output])] if output else [])]
    return json.dumps(dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5), indent=1)


@pytest.fixture
def repo(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "nb.ipynb").write_text(notebook("print(1)"))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.csv").write_text("a\n1\n")
    git("add", ".")
    git("commit", "-q", "-m", "init")
    return tmp_path


def label(repo):
    return results.git_commit(cwd=repo)


def test_clean_tree_has_no_suffix(repo):
    assert not label(repo).endswith("-dirty") and len(label(repo)) >= 7


def test_run_outputs_do_not_make_it_dirty(repo):
    (repo / "results" / "r.csv").write_text("a\n2\n")
    (repo / "nb.ipynb").write_text(notebook("print(1)", output="1\n"))  # outputs change, source does not
    assert not label(repo).endswith("-dirty")


@pytest.mark.parametrize("change", ["code", "notebook source", "deleted notebook"])
def test_code_or_notebook_source_changes_make_it_dirty(repo, change):
    if change == "code":
        (repo / "code.py").write_text("x = 2\n")
    elif change == "notebook source":
        (repo / "nb.ipynb").write_text(notebook("print(2)", output="2\n"))
    else:
        (repo / "nb.ipynb").unlink()
    assert label(repo).endswith("-dirty")


def test_outside_a_repository_is_unknown(tmp_path):
    assert results.git_commit(cwd=tmp_path) == "unknown"
