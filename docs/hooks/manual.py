"""MkDocs hooks that keep the manual tied to the repository.

- The CLI reference (``reference/cli.md``) is rendered from ``chaiderm.cli`` itself at build time, so it
  lists exactly the commands and options the installed code has.
- The research record (``research/``), the benchmarks' scripts and result files (``bench/``) and the
  CHANGELOG live outside ``docs/``; they join the site as generated files, so a page may link to them and the
  link is checked like any other.
- Pages link to those files as they sit in the repository (``../research/refine/refine.json`` from
  ``docs/results.md``), so the links work on the repository's web view too; the build rewrites them to the
  generated copies. A link to a repository file that does not exist stays as written and fails the strict
  build.
"""

from __future__ import annotations

import html
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
# repository folders whose files join the site under the same path
MIRRORED = ("research", "bench")
MIRRORED_SUFFIXES = (".md", ".json", ".py")
CHANGELOG = "CHANGELOG.md"
CLI_PAGE = "reference/cli.md"
CLI_MARKER = "<!-- cli-reference -->"
FORMATS_PAGE = "reference/formats.md"
CONFIG_MARKER = "<!-- config-fields -->"
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def _repo_path(page_uri: str) -> str:
    """Where a site page's source sits in the repository."""
    if page_uri == "changelog.md":
        return CHANGELOG
    if page_uri.split("/", 1)[0] in MIRRORED:
        return page_uri
    return "docs/" + page_uri


def _site_uri(repo_path: str) -> str | None:
    """The site path of a repository file, or None when the site has no copy of it."""
    if repo_path == CHANGELOG:
        return "changelog.md"
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/") :]
    if repo_path.split("/", 1)[0] in MIRRORED:
        return repo_path
    return None


def _mirrored(path: Path) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return not any(part in ("out", "__pycache__") or part.startswith(".") for part in rel.split("/"))


def _folder_page(folder: Path) -> str:
    """A page for a mirrored folder without a README: its files, linked, so a link to the folder resolves."""
    rel = folder.relative_to(REPO).as_posix()
    lines = [f"# `{rel}/`", "", "The files of this folder in the repository:", ""]
    for path in sorted(folder.iterdir()):
        if not _mirrored(path):
            continue
        if path.is_dir():
            lines.append(f"- [`{path.name}/`]({path.name}/{_folder_index(path)})")
        elif path.suffix in MIRRORED_SUFFIXES:
            lines.append(f"- [`{path.name}`]({path.name})")
    return "\n".join(lines) + "\n"


def _folder_index(folder: Path) -> str:
    return "README.md" if (folder / "README.md").is_file() else "index.md"


def on_files(files: Files, config) -> Files:
    for top in MIRRORED:
        for path in sorted([REPO / top, *(REPO / top).rglob("*")]):
            if not _mirrored(path):
                continue
            rel = path.relative_to(REPO).as_posix()
            if path.is_file() and path.suffix in MIRRORED_SUFFIXES:
                files.append(File.generated(config, rel, abs_src_path=str(path)))
            elif path.is_dir() and _folder_index(path) == "index.md":
                files.append(File.generated(config, f"{rel}/index.md", content=_folder_page(path)))
    files.append(File.generated(config, "changelog.md", abs_src_path=str(REPO / CHANGELOG)))
    return files


def _rewrite_link(match: re.Match, page_repo_path: str, page_uri: str) -> str:
    target = match.group(2)
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return match.group(0)
    path, _, anchor = target.partition("#")
    repo_target = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo_path), path))
    if (REPO / repo_target).is_dir() and repo_target.split("/", 1)[0] in MIRRORED:
        repo_target = f"{repo_target}/{_folder_index(REPO / repo_target)}"
        if not (REPO / repo_target).is_file():  # the generated page of a folder without a README
            uri = _site_uri(repo_target)
            return f"{match.group(1)}{posixpath.relpath(uri, posixpath.dirname(page_uri) or '.')}{match.group(3)}"
    uri = _site_uri(repo_target)
    if uri is None or not (REPO / repo_target).is_file():
        return match.group(0)  # left as written: a missing file fails the build
    new = posixpath.relpath(uri, posixpath.dirname(page_uri) or ".")
    return f"{match.group(1)}{new}{'#' + anchor if anchor else ''}{match.group(3)}"


def on_page_markdown(markdown: str, page, config, files) -> str:
    uri = page.file.src_uri
    repo_path = _repo_path(uri)
    if uri == CLI_PAGE:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if uri == FORMATS_PAGE:
        markdown = markdown.replace(CONFIG_MARKER, config_fields())
    return _LINK.sub(lambda m: _rewrite_link(m, repo_path, uri), markdown)


# --- the CLI reference -------------------------------------------------------------------------------------


def _text(s: str) -> str:
    """Help text as Markdown: code spans kept, everything else escaped (help may hold ``<index>``)."""
    parts = re.split(r"(`[^`]*`)", s)
    return "".join(
        p if p.startswith("`") and p.endswith("`") and len(p) > 1 else html.escape(p, quote=False) for p in parts
    )


def _paragraphs(help_text: str) -> str:
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", help_text.strip())]
    return "\n\n".join(_text(b) for b in blocks if b)


def commands(app=None):
    """Every command of the CLI as (path, click command, context), in the order `--help` lists them."""
    import typer

    if app is None:
        from chaiderm.cli import app
    root = typer.main.get_command(app)

    def walk(cmd, ctx, path):
        yield path, cmd, ctx
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    yield from walk(sub, sub.context_class(sub, parent=ctx, info_name=name), f"{path} {name}")

    yield from walk(root, root.context_class(root, info_name="chaiderm"), "chaiderm")


def _command_heading(path: str) -> str:
    return "##" if path.count(" ") <= 1 else "###"


def _command_section(path: str, cmd, ctx) -> str:
    lines = [f"{_command_heading(path)} `{path}`", ""]
    if cmd.help:
        lines += [_paragraphs(cmd.help), ""]
    # arguments as `--help` prints them: RUNS..., not {runs}...
    pieces = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), " ".join(cmd.collect_usage_pieces(ctx)))
    lines += ["```", f"{path} {pieces}".rstrip(), "```", ""]
    params = [p for p in cmd.params if not p.hidden and p.name != "help"]
    for p in params:
        record = p.get_help_record(ctx)
        if record is None:
            continue
        opts, help_text = record
        opts = " ".join(opts.split())
        lines.append(f"- `{opts}`" + (f": {_text(' '.join(help_text.split()))}" if help_text else ""))
    if hasattr(cmd, "list_commands"):
        subs = [n for n in cmd.list_commands(ctx) if not cmd.get_command(ctx, n).hidden]
        lines.append("Commands: " + ", ".join(f"`{path} {n}`" for n in subs) + ".")
    lines.append("")
    return "\n".join(lines)


def cli_reference(app=None) -> str:
    """The reference of every command, as Markdown, from the CLI's own declarations."""
    return "\n".join(_command_section(path, cmd, ctx) for path, cmd, ctx in commands(app))


# --- the fields of config.json -----------------------------------------------------------------------------


def _field_notes(cls) -> dict[str, str]:
    """Each dataclass field's comment in the source: the one on its line, else the block just above it."""
    import inspect

    notes: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("def ") or stripped.startswith("@"):
            break
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"^\s+(\w+)\s*:", line)
        if m:
            code, _, comment = line.partition("  # ")
            notes[m.group(1)] = comment.strip() if comment else " ".join(block)
        block = []
    return notes


def config_fields() -> str:
    """The fields of config.json's ``model``, ``train`` and ``data`` objects, from ``chaiderm.config``."""
    import dataclasses
    import json

    from chaiderm import config

    out: list[str] = []
    for key, cls in (("model", config.ModelConfig), ("train", config.TrainConfig), ("data", config.DataConfig)):
        notes = _field_notes(cls)
        out += [f"### `{key}`", ""]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            default = getattr(default, "value", default)  # an enum member is stored as its value
            note = notes.get(f.name, "")
            type_name = " ".join(
                str(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", f.type)).split()
            )
            line = f"- `{f.name}` (`{type_name}`, default `{json.dumps(default)}`)"
            out.append(line + (f": {_text(note)}" if note else ""))
        out.append("")
    return "\n".join(out)
