"""README.md and docs/*.md: the commands they mark runnable resolve, and every relative link lands.

Runnable blocks. A fenced code block whose info string is ``bash runnable``::

    ```bash runnable
    make demo
    ```

holds commands that work as written (GitHub highlights it as bash, the first word; this test reads the
second). Each command of such a block (continuation lines joined, ``#`` comments dropped, split at ``&&``,
``||``, ``;``, ``|`` and ``&``, leading ``VAR=value`` assignments skipped) must be one this test can check:

- ``workembed WORDS ...``: ``workembed WORDS --help`` exits with 0 (WORDS: the arguments before the first
  option, so sub-commands and stage names are checked against the parser);
- ``make TARGET ... [VAR=value ...]``: the Makefile defines every TARGET;
- ``python -m MODULE ...``: MODULE is importable (``importlib.util.find_spec``);
- ``ray job submit [options] -- COMMAND``: COMMAND is checked as above;
- ``serve run|deploy FILE``: FILE exists and the import path of each of its applications resolves;
- ``source FILE`` and ``curl ...``: shell environment and HTTP calls, not checked.

In every command, an argument that names a file under ``jobs/``, ``serve/`` or ``k8s/`` must exist, and
``--profile NAME`` next to ``-c FILE`` must name a profile of FILE. A block without ``runnable`` is
illustration (placeholders, cluster commands) and is not checked.

Links. Every relative link of README.md and docs/*.md names an existing file or folder, a ``#anchor`` names a
heading of the linked page (GitHub's slugs), and the README links every page of docs/.

Code names. The module paths that the pages name in code spans (``workembed.retrieval.leakage``,
``workembed.models.onnx_encoder.OnnxEncoder``, ``workembed/data/matching.py``, ``python -m jobs.train``) and
the ``workembed`` modules that their ``python`` blocks import exist in platform/ or jobs/ (read from the
files; nothing is imported), so that a moved module cannot leave a page behind.

The README itself opens with the two-command quick start (``make demo``, ``make test``), stays within
200 lines, and its layout map names paths that exist.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
RUNNABLE = "runnable"
MAX_README_LINES = 200
QUICK_START = ["make demo", "make test"]

SEPARATORS = {"&&", "||", ";", "|", "&"}
UNCHECKED = {"source", "curl"}
REPO_PATH_PREFIXES = ("jobs/", "serve/", "k8s/")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`]*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    lines: tuple[str, ...]

    @property
    def runnable(self) -> bool:
        return RUNNABLE in self.info.split()[1:]


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {shlex.join(self.argv)}"


# ----------------------------------------------------------------------------------------------- parsing


def split_fences(text: str) -> tuple[list[Block], list[str]]:
    """Fenced code blocks of a Markdown page, and the page's lines with those blocks blanked out."""
    blocks: list[Block] = []
    prose: list[str] = []
    fence: tuple[str, int, str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = (match.group(1), number, match.group(2).strip(), [])
                prose.append("")
            else:
                prose.append(line)
            continue
        marker, start, info, body = fence
        if (
            match
            and match.group(1)[0] == marker[0]
            and len(match.group(1)) >= len(marker)
            and not match.group(2)
        ):
            blocks.append(Block(Path(), start, info, tuple(body)))
            fence = None
        else:
            body.append(line)
        prose.append("")
    return blocks, prose


def page_blocks(page: Path) -> list[Block]:
    blocks, _ = split_fences(page.read_text(encoding="utf-8"))
    return [Block(page, b.line, b.info, b.lines) for b in blocks]


def block_commands(block: Block) -> list[Command]:
    """The commands of a block: continuation lines joined, comments dropped, split at shell separators."""
    commands: list[Command] = []
    pending, first = "", 0
    for offset, raw in enumerate(block.lines, start=block.line + 1):
        if not pending:
            first = offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical, pending = pending + raw, ""
        lexer = shlex.shlex(logical, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token in SEPARATORS:
                while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                    current.pop(0)  # VAR=value before the command
                if current:
                    commands.append(Command(block.page, first, tuple(current)))
                current = []
            else:
                current.append(token)
    assert not pending, f"{block.page.name}:{block.line}: the block ends in a line continuation"
    return commands


def runnable_commands() -> list[Command]:
    return [c for page in PAGES for b in page_blocks(page) if b.runnable for c in block_commands(b)]


# ---------------------------------------------------------------------------------------------- checking


def make_targets() -> set[str]:
    targets: set[str] = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/-][^:=#\t]*?)\s*::?(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


def module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def option_value(argv: tuple[str, ...], *names: str) -> str | None:
    for index, token in enumerate(argv):
        if token in names and index + 1 < len(argv):
            return argv[index + 1]
        for name in names:
            if name.startswith("--") and token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def check_arguments(argv: tuple[str, ...]) -> list[str]:
    """Files under jobs/, serve/ and k8s/ exist; ``--profile`` names a profile of the ``-c`` file."""
    problems = []
    for token in argv:
        value = token.split("=", 1)[1] if re.match(r"^[\w.-]+=", token) else token
        if value.startswith(REPO_PATH_PREFIXES) and not (ROOT / value).exists():
            problems.append(f"{value} does not exist")
    profile, config = option_value(argv, "--profile"), option_value(argv, "-c", "--config")
    if profile and config and (ROOT / config).is_file():
        profiles = (yaml.safe_load((ROOT / config).read_text(encoding="utf-8")) or {}).get("profiles") or {}
        if profile not in profiles:
            problems.append(f"{config} has no profile {profile!r} (it has: {', '.join(profiles) or 'none'})")
    return problems


def check_workembed(argv: tuple[str, ...]) -> list[str]:
    from workembed import cli

    words: list[str] = []
    for token in argv[1:]:
        if token.startswith("-"):
            break
        words.append(token)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main([*words, "--help"])
        except SystemExit as exit_:
            if exit_.code in (0, None):
                return []
            return [f"`workembed {' '.join(words)} --help` exits with {exit_.code}: {err.getvalue().strip()}"]
    return [f"`workembed {' '.join(words)} --help` ran the command instead of printing its help"]


def check_make(argv: tuple[str, ...]) -> list[str]:
    wanted = [token for token in argv[1:] if not token.startswith("-") and "=" not in token]
    missing = sorted(set(wanted) - make_targets())
    return [f"the Makefile has no target {name!r}" for name in missing] or ([] if wanted else ["no target"])


def check_python(argv: tuple[str, ...]) -> list[str]:
    if len(argv) < 3 or argv[1] != "-m":
        return ["only `python -m MODULE` is checked"]
    return [] if module_found(argv[2]) else [f"module {argv[2]} is not importable"]


def check_ray(argv: tuple[str, ...]) -> list[str]:
    if argv[1:3] != ("job", "submit") or "--" not in argv:
        return ["only `ray job submit ... -- COMMAND` is checked"]
    inner = argv[argv.index("--") + 1 :]
    return check_command(inner) if inner else ["no command after --"]


def check_serve(argv: tuple[str, ...]) -> list[str]:
    if len(argv) < 3 or argv[1] not in ("run", "deploy"):
        return ["only `serve run|deploy FILE` is checked"]
    path = ROOT / argv[2]
    if not path.is_file():
        return [f"{argv[2]} does not exist"]
    problems = []
    for app in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("applications") or []:
        module = str(app.get("import_path", "")).split(":", 1)[0]
        if not module_found(module):
            problems.append(f"{argv[2]}: import path module {module!r} is not importable")
    return problems


CHECKS = {
    "workembed": check_workembed,
    "make": check_make,
    "python": check_python,
    "python3": check_python,
    "ray": check_ray,
    "serve": check_serve,
}


def check_command(argv: tuple[str, ...]) -> list[str]:
    program = Path(argv[0]).name
    if program in UNCHECKED:
        return []
    if program not in CHECKS:
        return [
            f"no check for {program!r}: leave the block unmarked or teach tests/test_readme.py the command"
        ]
    return check_arguments(argv) + CHECKS[program](argv)


# ------------------------------------------------------------------------------------------------ anchors


def heading_text(markdown: str) -> str:
    """The rendered text of a heading: links become their text, emphasis and code marks go."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"(\*\*|__|\*|(?<!\w)_|_(?!\w))", "", text)
    return text.strip()


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation and symbols dropped, spaces become hyphens."""
    kept = []
    for char in heading_text(text).lower():
        category = unicodedata.category(char)
        if char in "-_ " or category[0] in "LN" or category == "Mn":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    _, prose = split_fences(page.read_text(encoding="utf-8"))
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose:
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", line))
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link outside code blocks and code spans."""
    _, prose = split_fences(page.read_text(encoding="utf-8"))
    text = "\n".join(prose)
    text = re.sub(r"(`+)(.+?)\1", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    found = []
    for match in re.finditer(
        r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", text, re.M
    ):
        target = match.group(1) or match.group(2)
        found.append((text.count("\n", 0, match.start()) + 1, target))
    return found


def relative_links() -> list[tuple[Path, int, str]]:
    return [
        (page, line, target)
        for page in PAGES
        for line, target in links(page)
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


# --------------------------------------------------------------------------------------------- code names

PACKAGE = ROOT / "platform" / "workembed"


def defines(source: Path, name: str) -> bool:
    """Whether a module's text defines (or imports, or names in ``__all__``/``__getattr__``) ``name``."""
    text = source.read_text(encoding="utf-8")
    pattern = rf"\b(?:class|def)\s+{name}\b|^{name}\s*[:=]|[\"']{name}[\"']|\bimport\b[^\n]*\b{name}\b"
    return re.search(pattern, text, re.M) is not None


def resolve_module(dotted: str) -> str | None:
    """Why ``workembed.a.b[.Attr]`` (or ``workembed.a.b:attr``) names no module and attribute in platform/."""
    module, _, attribute = dotted.partition(":")
    parts = module.split(".")[1:]
    path, consumed = PACKAGE, 0
    for part in parts:
        if (path / part / "__init__.py").is_file():
            path, consumed = path / part, consumed + 1
        elif (path / f"{part}.py").is_file():
            path, consumed = path / f"{part}.py", consumed + 1
            break
        else:
            break
    rest = [*parts[consumed:], *([attribute] if attribute else [])]
    source = path if path.suffix == ".py" else path / "__init__.py"
    if len(rest) > 1:
        return f"{dotted}: no module {'.'.join(['workembed', *parts[: consumed + 1]])} in platform/"
    if rest and not defines(source, rest[0]):
        if source.name == "__init__.py":
            return f"{dotted}: no such module in platform/, nor a name in {source.relative_to(ROOT)}"
        return f"{dotted}: {source.relative_to(ROOT)} defines no {rest[0]}"
    return None


def code_names(page: Path) -> list[tuple[int, str]]:
    """(line, name) of module paths in code spans and of workembed imports in python blocks."""
    blocks, prose = split_fences(page.read_text(encoding="utf-8"))
    text = "\n".join(prose)
    names = []
    for match in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", text):
        span, line = match.group(1), text.count("\n", 0, match.start()) + 1
        run_module = re.match(r"python -m ((?:workembed|jobs)(?:\.\w+)*)(?:\s|$)", span)
        if run_module:
            names.append((line, run_module.group(1)))
        elif re.fullmatch(r"(?:platform/)?workembed/[\w/]+\.py", span):
            names.append((line, span))
        elif re.fullmatch(r"workembed(?:\.\w+){2,}(?::\w+)?|workembed\.\w+(?::\w+)?", span):
            first = span.split(".")[1].split(":")[0]
            if span.count(".") >= 2 or (PACKAGE / first).is_dir() or (PACKAGE / f"{first}.py").is_file():
                names.append((line, span))
    for block in blocks:
        if block.info.split()[:1] == ["python"]:
            for offset, code in enumerate(block.lines, start=block.line + 1):
                imported = re.match(
                    r"^\s*(?:from\s+(workembed[\w.]*)\s+import|import\s+(workembed[\w.]*))", code
                )
                if imported:
                    names.append((offset, imported.group(1) or imported.group(2)))
    return names


def check_code_name(name: str) -> str | None:
    if name.startswith("jobs."):
        path = ROOT / (name.replace(".", "/") + ".py")
        return None if path.is_file() else f"{name}: no such job entrypoint ({path.relative_to(ROOT)})"
    if "/" in name:
        path = ROOT / name if name.startswith("platform/") else ROOT / "platform" / name
        return None if path.is_file() else f"{name}: no such file in platform/"
    return resolve_module(name)


# -------------------------------------------------------------------------------------------------- tests

COMMANDS = runnable_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_runnable_command_resolves(command: Command, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `python -m jobs.<stage>` runs from the project folder
    assert check_command(command.argv) == [], str(command)


def test_runnable_blocks_exercise_every_kind_of_check():
    programs = {Path(c.argv[0]).name for c in COMMANDS}
    programs |= {Path(c.argv[c.argv.index("--") + 1]).name for c in COMMANDS if "--" in c.argv[:-1]}
    assert {"workembed", "make", "python", "ray", "serve"} <= programs
    assert any(c.page == README for c in COMMANDS)


def test_quick_start_is_make_demo_and_make_test():
    first = next(b for b in page_blocks(README) if b.runnable)
    assert [shlex.join(c.argv) for c in block_commands(first)] == QUICK_START


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move detail to a page of docs/"


def test_readme_layout_names_existing_paths():
    text = README.read_text(encoding="utf-8")
    _, after = text.split("\n## Layout\n", 1)
    block = next(b for b in split_fences(after)[0])
    missing, parent = [], ROOT
    for line in block.lines:
        entry = re.match(r"^( {0,2})(\S+)(?:\s{2,}|$)", line)
        if not entry:
            continue  # a description continued on the next line
        indent, names = entry.group(1), [entry.group(2)]
        if not indent:
            names = [n for n in re.split(r"\s{2,}", line)[0].split() if n]
        for name in names:
            path = (ROOT if not indent else parent) / name
            if not path.exists():
                missing.append(str(path.relative_to(ROOT)))
            if not indent and name.endswith("/"):
                parent = path
    assert missing == []


@pytest.mark.parametrize(
    "page, line, target", relative_links(), ids=lambda v: v.name if isinstance(v, Path) else str(v)
)
def test_relative_link_lands(page: Path, line: int, target: str):
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    where = f"{page.relative_to(ROOT)}:{line}: {target}"
    assert destination.exists(), f"{where}: no such file"
    if anchor and destination.suffix == ".md":
        assert anchor in anchors(destination), f"{where}: no heading with that anchor in {destination.name}"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README)}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert unlinked == []


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("Skill extraction (ConTeXT-match)", "skill-extraction-context-match"),
        ("Project → profile matching", "project--profile-matching"),
        ("`workembed run ingest` (`jobs/configs/ingest.yaml`)", "workembed-run-ingest-jobsconfigsingestyaml"),
        ("Serving: `args` of `serve/config.yaml`", "serving-args-of-serveconfigyaml"),
        ("A [linked](page.md) *heading*", "a-linked-heading"),
    ],
)
def test_slug_follows_github(heading: str, anchor: str):
    assert slug(heading) == anchor


def test_block_commands_split_and_join():
    block = Block(
        README,
        1,
        "bash runnable",
        (
            "make services-up && source .workembed/services/env   # comment",
            "ray job submit --working-dir . \\",
            "    -- python -m jobs.train -c jobs/configs/train.yaml",
            "DEMO_ESCO=esco/v1.1.1 make demo KEEP=1",
        ),
    )
    assert [c.argv for c in block_commands(block)] == [
        ("make", "services-up"),
        ("source", ".workembed/services/env"),
        (
            "ray",
            "job",
            "submit",
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "jobs.train",
            "-c",
            "jobs/configs/train.yaml",
        ),
        ("make", "demo", "KEEP=1"),
    ]
    assert [c.line for c in block_commands(block)] == [2, 2, 3, 5]


def test_a_wrong_command_is_reported(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    assert check_command(("workembed", "run", "no-such-stage", "-c", "jobs/configs/ingest.yaml")) != []
    assert check_command(("make", "no-such-target")) != []
    assert check_command(("python", "-m", "workembed.no_such_module")) != []
    assert (
        check_command(("workembed", "run", "train", "-c", "jobs/configs/train.yaml", "--profile", "nope"))
        != []
    )
    assert check_command(("serve", "run", "serve/no-such.yaml")) != []
    assert check_command(("kubectl", "apply", "-k", "k8s/overlays/local")) != []


@pytest.mark.parametrize(
    "page, line, name",
    [(page, line, name) for page in PAGES for line, name in code_names(page)],
    ids=lambda v: v.name if isinstance(v, Path) else str(v),
)
def test_code_name_exists(page: Path, line: int, name: str):
    assert check_code_name(name) is None, f"{page.relative_to(ROOT)}:{line}: {check_code_name(name)}"


def test_code_name_check_reports_moved_modules():
    assert check_code_name("workembed.retrieval.leakage") is None
    assert check_code_name("workembed.models.onnx_encoder.OnnxEncoder") is None
    assert check_code_name("workembed/data/matching.py") is None
    assert check_code_name("workembed.eval.no_such_module") is not None
    assert check_code_name("workembed.models.onnx_encoder.NoSuchClass") is not None
    assert check_code_name("workembed/eval/no_such_module.py") is not None
    assert check_code_name("jobs.train") is None
    assert check_code_name("jobs.no_such_stage") is not None
