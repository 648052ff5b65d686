"""The manual and the README: the site builds with no broken link, the CLI reference lists every command and
option the CLI has, nothing cites a file outside the repository or one that does not exist, and the README
stays a page."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import chaiderm

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCREENSHOT = ROOT / "docs" / "img" / "viewer.jpg"
# flags of other programs that the guide quotes (torchrun, mkdocs, bench/run.py)
FOREIGN_FLAGS = {"--help", "--nnodes", "--nproc-per-node", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--strict"}
FOREIGN_FLAGS |= {"--only"}


def _markdown_files() -> list[Path]:
    files = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    files += sorted(p for p in (ROOT / "research").rglob("*.md") if "out" not in p.relative_to(ROOT).parts)
    files += sorted((ROOT / "bench").glob("*.md"))
    return files


def _cli_commands():
    """(path, command, context) for every command, walked independently of the docs hook."""
    import typer

    from chaiderm.cli import app

    root = typer.main.get_command(app)
    todo = [("chaiderm", root, root.context_class(root, info_name="chaiderm"))]
    while todo:
        path, cmd, ctx = todo.pop(0)
        yield path, cmd, ctx
        for name in getattr(cmd, "list_commands", lambda _ctx: [])(ctx):
            sub = cmd.get_command(ctx, name)
            if not sub.hidden:
                todo.append((f"{path} {name}", sub, sub.context_class(sub, parent=ctx, info_name=name)))


def _options(cmd) -> list[str]:
    return [o for p in cmd.params if not p.hidden and p.param_type_name == "option" for o in p.opts if o != "--help"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ)
    # the build imports chaiderm.cli: the same chaiderm this test imports
    env["PYTHONPATH"] = os.pathsep.join([str(Path(chaiderm.__file__).parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_manual_builds_strictly(site):
    for page in ("index.html", "reference/cli/index.html", "reference/formats/index.html", "results/index.html"):
        assert (site / page).is_file(), page
    assert (site / "changelog" / "index.html").is_file()
    assert (site / "research" / "index.html").is_file()  # research/README.md, the research record's index


def test_cli_reference_lists_every_command_and_option(site):
    page = (site / "reference" / "cli" / "index.html").read_text()
    for path, cmd, _ctx in _cli_commands():
        assert f"<code>{path}</code>" in page, f"{path} missing from the CLI reference"
        for opt in _options(cmd):
            assert opt in page, f"{path} {opt} missing from the CLI reference"


def test_formats_page_lists_every_config_field(site):
    import dataclasses

    from chaiderm import config

    page = (site / "reference" / "formats" / "index.html").read_text()
    for cls in (config.ModelConfig, config.TrainConfig, config.DataConfig):
        for f in dataclasses.fields(cls):
            assert f"<code>{f.name}</code>" in page, f"{cls.__name__}.{f.name} missing from the formats page"


def test_every_route_of_the_server_is_in_the_api_table(served, tmp_path):
    """A route added to the server without a line in the guide's API table fails here."""
    from chaiderm.web.app import create_app

    page = (ROOT / "docs" / "guide" / "viewer.md").read_text()
    app = create_app(served / "run", served / "ix", tmp_path / "fb.db")
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            assert f"`{method.upper()} {path}" in page, f"{method.upper()} {path} is not in docs/guide/viewer.md"


def test_no_document_refers_outside_the_repository():
    bad = re.compile(r"\.\./shared|MEASURED\.md|/work/|/home/|/tmp/docsdemo")
    for md in _markdown_files():
        for n, line in enumerate(md.read_text().splitlines(), 1):
            assert not bad.search(line), f"{md.relative_to(ROOT)}:{n}: {line.strip()}"
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
                    continue
                resolved = (md.parent / target.partition("#")[0]).resolve()
                where = f"{md.relative_to(ROOT)}:{n}: {target}"
                assert resolved.is_relative_to(ROOT), f"{where} points outside the repository"
                assert resolved.exists(), f"{where} does not exist"


def test_quoted_repository_paths_exist():
    """A path like `research/refine/refine.json` or docs/design.md named in a document or a docstring exists,
    so moving a file cannot leave its citations behind (research/README.md's map of old paths excepted)."""
    quoted = re.compile(r"(?<![\w./-])((?:docs|research|bench|tests)/[\w./-]*\w\.(?:md|json|py))\b")
    sources = _markdown_files() + [
        p for top in ("src", "tests", "bench", "research") for p in sorted((ROOT / top).rglob("*.py"))
    ]
    for source in sources:
        text = source.read_text()
        if source == ROOT / "research" / "README.md":
            text = text.split("## Old paths")[0]
        for n, line in enumerate(text.splitlines(), 1):
            for path in quoted.findall(line):
                if "*" in path or "<" in path:
                    continue
                assert (ROOT / path).exists(), f"{source.relative_to(ROOT)}:{n}: {path} does not exist"


def test_modules_the_manual_names_exist():
    """The manual names modules by their path in the package (`web/access.py`, `index/lock.py`): they exist."""
    package = Path(chaiderm.__file__).parent
    module = re.compile(r"`((?:[a-z_]+/)+[a-z_]+\.py)`")
    for md in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for path in module.findall(md.read_text()):
            assert (package / path).is_file() or (ROOT / path).is_file(), f"{md.relative_to(ROOT)} names {path}"


def test_options_the_guide_names_exist():
    known = {o for _path, cmd, _ctx in _cli_commands() for o in _options(cmd)}
    known |= {s for _path, cmd, _ctx in _cli_commands() for p in cmd.params for s in p.secondary_opts}
    for md in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])(?![\w*-])", md.read_text()):
            assert flag in known or flag in FOREIGN_FLAGS, f"{md.relative_to(ROOT)} names {flag}, which no command has"


def test_readme_is_a_page_with_the_two_commands_and_the_viewer():
    text = README.read_text()
    words = len(re.findall(r"\S+", text))
    assert words <= 1200, f"README.md has {words} words"
    assert "pip install -e . && chaiderm demo\npip install -e '.[test]' && pytest\n" in text
    assert "docs/img/viewer.jpg" in text
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size < 300_000
