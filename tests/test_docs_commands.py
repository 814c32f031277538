"""The commands the docs show work as shown: each shell command in a fenced block of
README.md, docs/*.md and roles/*/README.md (and each `code span` in their prose that starts
with onnxfleet, make, ansible-playbook, pytest or python and shows no placeholder) is
checked against the real tool, without side effects and without Docker or the network:

- ``onnxfleet <command> ...``: parsed by the real argparse parser (``onnxfleet.cli``);
  ``onnxfleet load`` with a token or ``--cacert`` over ``http://`` is wrong too;
- ``ansible-playbook X.yml ...``: ``--syntax-check`` with the same options, against an
  inventory of the contract's groups and no hosts (the shown ``-i`` file must exist; its
  plugin would call Docker or AWS); ``-e @file`` made by a heredoc earlier in the same doc
  is made here too; every ``-e`` variable is one a playbook, role or inventory uses;
- ``ansible <pattern> ...`` (ad hoc): the pattern names the contract's groups, the ``-i``
  file exists, the module is one ansible-doc knows, and ansible parses the options
  (``--list-hosts`` against that hostless inventory);
- ``make <target>``: the target is in the Makefile;
- ``curl``: every option is one this curl knows, and a request carrying the fleet's token or
  aimed at the edge's ports uses https with ``--cacert`` (the edge is TLS only);
- ``python -m X``: the module exists;
- any argument or prose `code span` that names a file of this repository, and every
  relative Markdown link and its anchor, exist.

A command no checker covers is a failure unless its program is in ``UNCHECKED`` with the
reason. ``sh``/``bash``/``shell`` blocks are commands line by line, ``console`` blocks only
their ``$ `` lines; a ``yaml`` block that is a play (``- hosts:``) is syntax-checked as a
playbook; diagrams and ``json``/``python``/``text`` blocks are not commands.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import ROOT

SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}

# Programs shown in the docs that no checker runs, and why. Their repository paths are
# still checked.
UNCHECKED: dict[str, str] = {
    "export": "shell builtin",
    "echo": "shell builtin",
    "cat": "reads or writes the user's own files (a heredoc is kept for -e @file)",
    "python": "inline code or a script's own options (a -m module and named files are checked)",
    "jq": "a JSON filter over a repository file (the file is checked)",
    "docker": "the Docker CLI: this check runs without Docker (tests/worker runs the image)",
    "ansible-inventory": "the AWS inventory plugin needs AWS credentials and the network",
    "pytest": "collecting a suite takes longer than this check may (its paths are checked)",
    "ansible-galaxy": "installing reaches Galaxy (test_ansible_galaxy.py installs the built artifact)",
    "cp": "copies the user's own files (a repository path it names is checked)",
}

PATH_SUFFIXES = {".yml", ".yaml", ".onnx", ".json", ".md", ".py", ".sh", ".cfg", ".toml", ".txt"}
EDGE_PORTS = {443, 8443}


@dataclass
class Command:
    doc: str
    line: int
    text: str
    inline: bool = False  # a `code span` in prose, not a fenced block


@dataclass
class Doc:
    """One Markdown file's shell commands and the files its heredocs make (``cat > f``)."""

    name: str
    commands: list[Command] = field(default_factory=list)
    heredocs: dict[str, str] = field(default_factory=dict)
    playbooks: list[tuple[int, str]] = field(default_factory=list)  # yaml blocks with hosts:


# --- extraction -------------------------------------------------------------------------

FENCE = re.compile(r"^(\s*)```\s*([\w-]*)")


def parse_doc(name: str, text: str) -> Doc:
    doc = Doc(name)
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, language = len(fence.group(1)), fence.group(2).lower()
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append((i + 1, lines[i][indent:] if not lines[i][:indent].strip() else lines[i].lstrip()))
            i += 1
        i += 1
        if language in SHELL_LANGUAGES:
            _block_commands(doc, body, console=language == "console")
        elif language in {"yaml", "yml"} and body and re.match(r"^- (hosts|name):", body[0][1]):
            doc.playbooks.append((body[0][0], "\n".join(line for _, line in body) + "\n"))
    _inline_commands(doc, text)
    return doc


# Prose names commands in `code spans` too; those starting so are checked, unless they
# show placeholders (`onnxfleet load --cacert CA`, `--url http://<that address>`, `...`).
INLINE = re.compile(r"^(\.venv/bin/)?(onnxfleet|make|ansible-playbook|pytest|python) ")
PLACEHOLDER = re.compile(r"<|\.\.\.|…|(?<![\w=-])[A-Z][A-Z:_]+(?![\w=])")


def _inline_commands(doc: Doc, text: str) -> None:
    for number, line in enumerate(_prose_lines(text), start=1):
        for match in re.finditer(r"`([^`]+)`", line):
            span = match.group(1).strip()
            if INLINE.match(span) and not PLACEHOLDER.search(span):
                doc.commands.append(Command(doc.name, number, span, inline=True))


def _prose_lines(text: str) -> list[str]:
    """``text``'s lines with those of fenced blocks blanked (line numbers kept)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def _block_commands(doc: Doc, body: list[tuple[int, str]], console: bool) -> None:
    pending: tuple[int, str] | None = None
    heredoc: tuple[str, str, list[str]] | None = None  # (end word, file, lines)
    for number, raw in body:
        line = raw
        if heredoc is not None:
            end, target, content = heredoc
            if line.strip() == end:
                if target:
                    doc.heredocs[target] = "\n".join(content) + "\n"
                heredoc = None
            else:
                content.append(line)
            continue
        if pending is None:
            if console:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line.strip():
                continue
            pending = (number, line)
        else:
            pending = (pending[0], pending[1] + " " + line.strip())
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
            continue
        doc.commands.append(Command(doc.name, pending[0], pending[1]))
        opened = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", pending[1])
        if opened:
            target = re.search(r">\s*([\w./-]+)", pending[1].replace(opened.group(0), ""))
            heredoc = (opened.group(1), target.group(1) if target else "", [])
        pending = None


def substitutions(text: str) -> tuple[str, list[str]]:
    """``text`` with each ``$(...)`` replaced by a placeholder word, and their contents."""
    inner: list[str] = []
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            inner.append(text[i + 2 : j - 1])
            out.append("SUBSTITUTED")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out), inner


def simple_commands(text: str) -> Iterator[list[str]]:
    """The argv of each simple command in a shell line (pipelines, lists and command
    substitutions split apart; redirections, comments and leading assignments dropped).
    ``[...]`` is the docs' notation for an optional part: checked as if given."""
    text = re.sub(r"(?<=\s)\[(-[^\]]*)\]", r"\1", text)
    text, inner = substitutions(text)
    for nested in inner:
        yield from simple_commands(nested)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    argv: list[str] = []
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
            continue
        if token in {"|", "||", "&&", ";", "&"}:
            if argv:
                yield argv
            argv = []
        elif token in {">", ">>", "<", "<<", "<<-", "2>", "&>"}:
            skip_next = True
        elif not argv and re.match(r"^[A-Za-z_]\w*=", token):
            continue
        else:
            argv.append(token)
    if argv:
        yield argv


# --- checkers ---------------------------------------------------------------------------


def program(argv: list[str]) -> str:
    name = Path(argv[0]).name
    return "python" if re.fullmatch(r"python3(\.\d+)?", name) else name


def check_onnxfleet(args: list[str]) -> list[str]:
    from onnxfleet.cli import build_parser

    command = next((arg for arg in args if not arg.startswith("-")), None)
    stderr, stdout = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            parsed = build_parser(command).parse_args(args)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return [f"onnxfleet rejects it: {stderr.getvalue().strip().splitlines()[-1]}"]
        return []
    if command != "load" or not str(parsed.url).startswith("http://"):
        return []
    # What `onnxfleet load` checks when it runs needs the user's files (token, CA, bodies):
    # of that, only the rules about the URL's scheme are checked here.
    if parsed.cacert is not None:
        return ["onnxfleet load: --cacert with an http:// URL is bad usage (exit 2)"]
    if parsed.token is not None or parsed.token_file is not None:
        return ["onnxfleet load: a token over http://; the edge answers only https"]
    return []


@functools.cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return frozenset(
        name
        for match in re.finditer(r"^([A-Za-z0-9_. -]+):(?!=)", text, re.MULTILINE)
        for name in match.group(1).split()
    )


def check_make(args: list[str]) -> list[str]:
    problems = []
    for arg in args:
        if arg.startswith("-"):
            problems.append(f"make option {arg!r} is not one the docs should need")
        elif "=" not in arg and arg not in make_targets():
            problems.append(f"make has no target {arg!r}")
    return problems


PLAYBOOK_OPTIONS_WITH_VALUE = {"-i", "--inventory", "-e", "--extra-vars", "-l", "--limit", "-t", "--tags"}


def check_ansible_playbook(args: list[str], doc: Doc, workdir: Path) -> list[str]:
    problems, argv = syntax_check_argv(args, doc, workdir)
    if argv is None:
        return problems
    result = syntax_check(argv)
    return [f"ansible-playbook --syntax-check fails: {result}"] if result else []


def syntax_check_argv(args: list[str], doc: Doc, workdir: Path) -> tuple[list[str], tuple[str, ...] | None]:
    """What is wrong before running ansible-playbook, else the arguments to check it with."""
    problems: list[str] = []
    argv: list[str] = []
    playbooks: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in PLAYBOOK_OPTIONS_WITH_VALUE:
            value = next(it, "")
            if arg in {"-i", "--inventory"}:
                if not (ROOT / value).exists():
                    problems.append(f"inventory {value!r} is not in the repository")
                continue  # the syntax check uses an empty inventory (no Docker, no AWS)
            if arg in {"-e", "--extra-vars"} and value.startswith("@"):
                name = value[1:]
                if name in doc.heredocs:
                    made = workdir / Path(name).name
                    made.write_text(re.sub(r"\$\{?\w+\}?", "x", doc.heredocs[name]), encoding="utf-8")
                    value = f"@{made}"
                elif not (ROOT / name).is_file():
                    problems.append(f"extra-vars file {name!r} is neither in the repository nor made above")
                    continue
            if arg in {"-e", "--extra-vars"}:
                problems += unknown_variables(value, doc)
                if re.fullmatch(r"[A-Za-z_]\w*=[\w./:-]*", value):
                    continue  # key=value always parses; fewer distinct runs keep the check fast
            argv += [arg, value]
        else:
            argv.append(arg)
            if not arg.startswith("-"):
                playbooks.append(arg)
    if not playbooks:
        problems.append("ansible-playbook without a playbook")
    for playbook in playbooks:
        # a playbook of this collection by name (onnxfleet.serving.site: playbooks/site.yml)
        shipped = ROOT / "playbooks" / f"{playbook.removeprefix('onnxfleet.serving.')}.yml"
        if playbook.startswith("onnxfleet.serving.") and not shipped.is_file():
            problems.append(f"playbook {playbook!r} is not in the collection's playbooks/")
        elif not playbook.startswith("onnxfleet.serving.") and not (ROOT / playbook).is_file():
            problems.append(f"playbook {playbook!r} is not in the repository")
    return problems, None if problems else tuple(argv)


@functools.cache
def ansible_words() -> frozenset[str]:
    """Every identifier in the playbooks, roles and inventory: a variable the docs pass
    with -e is one of them, or the run ignores it without a word."""
    files = [*ROOT.glob("*.yml"), *ROOT.glob("playbooks/**/*.yml"), *ROOT.glob("roles/**/*.yml")]
    files += ROOT.glob("inventory/**/*.yml")
    text = "\n".join(f.read_text(encoding="utf-8") for f in files)
    return frozenset(re.findall(r"\b[a-z_][a-z0-9_]*\b", text))


def unknown_variables(value: str, doc: Doc) -> list[str]:
    if value.startswith("@"):
        value = doc.heredocs.get(value[1:], "{}")
    if value.lstrip().startswith("{"):
        try:
            names = list(json.loads(re.sub(r"\$\{?\w+\}?", "x", value)))
        except ValueError:
            return []  # the syntax check reports it
    else:
        names = [pair.split("=", 1)[0] for pair in shlex.split(value) if "=" in pair]
    unknown = [name for name in names if name not in ansible_words()]
    return [f"-e {name}: no playbook, role or inventory uses it" for name in unknown]


# ansible-playbook runs are most of this check's time: a doc's are started together.
_POOL = ThreadPoolExecutor(max_workers=3)
_GROUP_POOL = ThreadPoolExecutor(max_workers=2)
_SYNTAX_CHECKS: dict[tuple[str, ...], Future[str]] = {}


def split_playbooks(argv: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(playbooks, the other arguments) of an ansible-playbook command line."""
    playbooks: list[str] = []
    options: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in PLAYBOOK_OPTIONS_WITH_VALUE:
            options += [arg, next(it, "")]
        elif arg.startswith("-"):
            options.append(arg)
        else:
            playbooks.append(arg)
    return tuple(playbooks), tuple(options)


def start_syntax_checks(argvs: list[tuple[str, ...]]) -> None:
    """Start the checks of ``argvs``. Those with the same options share one run (it takes
    several playbooks); each runs alone only when that run fails, to say which one."""
    groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for argv in dict.fromkeys(argvs):
        if argv not in _SYNTAX_CHECKS:
            groups.setdefault(split_playbooks(argv)[1], []).append(argv)
    for options, members in groups.items():
        if len(members) == 1:
            start_syntax_check(members[0])
            continue
        playbooks = tuple(dict.fromkeys(p for member in members for p in split_playbooks(member)[0]))
        together = _GROUP_POOL.submit(_syntax_check, (*playbooks, *options))
        for member in members:
            _SYNTAX_CHECKS[member] = _POOL.submit(_alone_if_failed, together, member)


def _alone_if_failed(together: Future[str], argv: tuple[str, ...]) -> str:
    return together.result() and _syntax_check(argv)


def start_syntax_check(argv: tuple[str, ...]) -> Future[str]:
    if argv not in _SYNTAX_CHECKS:
        _SYNTAX_CHECKS[argv] = _POOL.submit(_syntax_check, argv)
    return _SYNTAX_CHECKS[argv]


def syntax_check(argv: tuple[str, ...]) -> str:
    """'' when ``ansible-playbook ARGV --syntax-check`` passes, else its error line and a few after it."""
    return start_syntax_check(argv).result()


@functools.cache
def contract_inventory() -> Path:
    """An inventory with the groups every fleet inventory has (docs/design.md, "Inventory
    contract") and no hosts: what plays target resolves, and nothing is reached."""
    directory = Path(tempfile.mkdtemp(prefix="docs-commands-inventory-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    inventory = directory / "inventory.yml"
    inventory.write_text(
        "all:\n  children:\n    onnxfleet:\n      children:\n"
        "        workers: {}\n        orchestrators: {}\n",
        encoding="utf-8",
    )
    return inventory


def _syntax_check(argv: tuple[str, ...]) -> str:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    executable = Path(sys.executable).parent / "ansible-playbook"
    run = subprocess.run(
        [str(executable), *argv, "--syntax-check", "-i", str(contract_inventory())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode == 0:
        return ""
    output = (run.stderr + run.stdout).splitlines()
    lines = [line for line in output if "WARNING" not in line and line.strip()]
    first = next((i for i, line in enumerate(lines) if "error" in line.lower()), max(len(lines) - 3, 0))
    return " / ".join(lines[first : first + 4])


ADHOC_OPTIONS_WITH_VALUE = {"-i", "--inventory", "-m", "--module-name", "-a", "--args", "-e", "--extra-vars"}
# The groups every fleet inventory has (docs/design.md, "Inventory contract"), and Ansible's own.
CONTRACT_GROUPS = {"all", "localhost", "onnxfleet", "workers", "orchestrators"}


def check_ansible_adhoc(args: list[str]) -> list[str]:
    problems: list[str] = []
    argv: list[str] = []
    patterns: list[str] = []
    module = "ansible.builtin.command"
    it = iter(args)
    for arg in it:
        if arg in ADHOC_OPTIONS_WITH_VALUE:
            value = next(it, "")
            if arg in {"-i", "--inventory"}:
                if not (ROOT / value).exists():
                    problems.append(f"inventory {value!r} is not in the repository")
                continue  # checked against a hostless inventory (no Docker, no AWS)
            if arg in {"-m", "--module-name"}:
                module = value
            argv += [arg, value]
        else:
            argv.append(arg)
            if not arg.startswith("-"):
                patterns.append(arg)
    if len(patterns) != 1:
        return [*problems, f"ansible: one host pattern expected, got {patterns}"]
    unknown = {g for g in re.split(r"[:,]", patterns[0]) if g and g.lstrip("!&") not in CONTRACT_GROUPS}
    if unknown:
        problems.append(f"ansible: {sorted(unknown)} are not groups of the inventory contract")
    if not ansible_module_exists(module):
        problems.append(f"ansible: no module {module!r}")
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            *argv,
            "-i",
            str(contract_inventory()),
            "--list-hosts",
        ],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode != 0:
        errors = [line for line in (run.stderr + run.stdout).splitlines() if "error" in line.lower()]
        problems.append(f"ansible rejects it: {(errors or [run.stderr.strip()])[-1]}")
    return problems


@functools.cache
def ansible_module_exists(name: str) -> bool:
    run = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-t", "module", "--json", name],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return run.returncode == 0 and name in run.stdout


@dataclass(frozen=True)
class CurlOptions:
    flags: frozenset[str]  # take no value
    valued: frozenset[str]  # take a value


@functools.cache
def curl_options() -> CurlOptions | None:
    curl = shutil.which("curl")
    if curl is None:
        return None
    listing = subprocess.run([curl, "--help", "all"], capture_output=True, text=True, check=True).stdout
    flags: set[str] = set()
    valued: set[str] = set()
    for match in re.finditer(r"^\s*(?:(-[\w#:]),\s+)?(--[\w.-]+)(\s+<)?", listing, re.MULTILINE):
        names = {n for n in match.group(1, 2) if n}
        (valued if match.group(3) else flags).update(names)
    return CurlOptions(frozenset(flags), frozenset(valued))


def check_curl(args: list[str]) -> list[str]:
    options = curl_options()
    if options is None:
        pytest.skip("curl is not installed: its options cannot be checked")
    problems: list[str] = []
    urls: list[str] = []
    headers: list[str] = []
    seen: set[str] = set()
    it = iter(args)
    for arg in it:
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            if name in options.valued:
                value = arg.split("=", 1)[1] if "=" in arg else next(it, "")
                if name == "--header":
                    headers.append(value)
            elif name not in options.flags:
                problems.append(f"curl has no option {name!r}")
            seen.add(name)
        elif arg.startswith("-") and len(arg) > 1:
            for k, letter in enumerate(arg[1:], start=1):
                short = f"-{letter}"
                if short in options.valued:
                    value = arg[k + 1 :] or next(it, "")
                    if short == "-H":
                        headers.append(value)
                    seen.add(short)
                    break
                if short not in options.flags:
                    problems.append(f"curl has no option {short!r}")
                seen.add(short)
        else:
            urls.append(arg)
    if not urls:
        problems.append("curl without a URL")
    if seen & {"-k", "--insecure"}:
        problems.append("curl --insecure: the docs give --cacert with the fleet's CA instead")
    bearer = any(h.lower().startswith("authorization: bearer") for h in headers)
    for url in urls:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if bearer or parts.port in EDGE_PORTS:
            if parts.scheme != "https":
                problems.append(f"{url}: the edge (token, port 443/8443) answers only https")
            elif not seen & {"--cacert", "--capath"}:
                problems.append(f"{url}: https to the edge needs --cacert with the fleet's CA")
    return problems


def repository_paths(argv: list[str], doc: Doc) -> list[str]:
    """Arguments that name a file of this repository and do not exist."""
    top = {p.name for p in ROOT.iterdir()}
    problems = []
    for arg in argv[1:]:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg.lstrip("@")
        if (
            not value
            or value.startswith(("-", "/", "~", "$"))
            or "://" in value
            or any(c in value for c in " :=<>{}*$")
            or value in doc.heredocs
        ):
            continue
        first = value.split("/", 1)[0]
        looks_like_a_path = ("/" in value and first in top) or Path(value).suffix in PATH_SUFFIXES
        if looks_like_a_path and not (ROOT / value).exists():
            problems.append(f"{value!r} is not in the repository")
    return problems


def check_python(args: list[str]) -> list[str]:
    """``python -m package.module`` of this repository names a module that exists."""
    if "-m" not in args[:-1]:
        return []
    module = args[args.index("-m") + 1]
    base = ROOT / module.replace(".", "/")
    if not (ROOT / module.split(".")[0]).is_dir() or base.with_suffix(".py").is_file() or base.is_dir():
        return []
    return [f"python -m {module}: no such module in the repository"]


def check_ssh(args: list[str]) -> list[str]:
    """The options parse: ``ssh -G`` prints the configuration they make and connects nowhere."""
    ssh = shutil.which("ssh")
    if ssh is None:
        return ["ssh is not installed (openssh-client), so its options cannot be checked"]
    # a shell variable stands for a value of its own name ($node: a host called "node")
    args = [re.sub(r"\$\{?(\w+)\}?", r"\1", arg) for arg in args]
    parsed = subprocess.run([ssh, "-G", *args], capture_output=True, text=True, timeout=30, check=False)
    return [] if parsed.returncode == 0 else [f"ssh -G rejects the options: {parsed.stderr.strip()}"]


def check_command(argv: list[str], doc: Doc, workdir: Path, inline: bool = False) -> list[str]:
    name = program(argv)
    problems = repository_paths(argv, doc)
    if name == "python":
        problems += check_python(argv[1:])
    if name == "onnxfleet" and inline and not any(arg.startswith("-") for arg in argv[1:]):
        from onnxfleet.cli import COMMANDS

        # Prose naming a command (`onnxfleet worker`), not showing a whole invocation.
        if argv[1:] and argv[1] not in COMMANDS:
            problems.append(f"onnxfleet has no command {argv[1]!r}")
    elif name == "onnxfleet":
        problems += check_onnxfleet(argv[1:])
    elif name == "ansible-playbook" and inline and all(arg.startswith("-") for arg in argv[1:]):
        pass  # prose naming the tool or an option (`ansible-playbook --syntax-check`)
    elif name == "ansible-playbook":
        problems += check_ansible_playbook(argv[1:], doc, workdir)
    elif name == "ansible":
        problems += check_ansible_adhoc(argv[1:])
    elif name == "make":
        problems += check_make(argv[1:])
    elif name == "curl":
        problems += check_curl(argv[1:])
    elif name == "ssh":
        problems += check_ssh(argv[1:])
    elif name not in UNCHECKED:
        problems.append(f"no check for {name!r}: add one, or add it to UNCHECKED with the reason")
    return problems


# --- links ------------------------------------------------------------------------------


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^\s*```.*?^\s*```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.MULTILINE)}


def broken_links(path: Path, text: str) -> list[str]:
    prose = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    problems = []
    for match in re.finditer(r"\]\(([^)\s]+)\)", prose):
        target = match.group(1)
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"link ({target}): {file_part} does not exist")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            problems.append(f"link ({target}): {linked.name} has no heading #{fragment}")
    return problems


def missing_prose_paths(text: str) -> list[str]:
    """`code spans` in prose naming a repository path (its first part is a top-level entry)
    that does not exist. ``.cache/`` is what runs make; a path inside a role (``meta/...``
    said of every role) exists in one of them."""
    top = {p.name for p in ROOT.iterdir()} - {".cache"}
    problems = []
    for number, line in enumerate(_prose_lines(text), start=1):
        for match in re.finditer(r"`([^`\s]+)`", line):
            value = match.group(1).rstrip("/")
            if "/" not in value or value.split("/", 1)[0] not in top or re.search(r"[<>*{}$:]", value):
                continue
            if not (ROOT / value).exists() and not any(ROOT.glob(f"roles/*/{value}")):
                problems.append(f"line {number}: `{value}` is not in the repository")
    return problems


# --- the check --------------------------------------------------------------------------


def doc_problems(name: str, text: str, path: Path | None = None) -> list[str]:
    doc = parse_doc(name, text)
    problems: list[str] = []
    parsed: list[tuple[Command, list[list[str]]]] = []
    for command in doc.commands:
        try:
            parsed.append((command, list(simple_commands(command.text))))
        except ValueError as error:
            problems.append(f"{name}:{command.line}: does not parse as shell ({error}): {command.text}")
    with tempfile.TemporaryDirectory(prefix="docs-commands-") as workdir:
        shown = [argv for _, argvs in parsed for argv in argvs if program(argv) == "ansible-playbook"]
        check_argvs = [syntax_check_argv(argv[1:], doc, Path(workdir))[1] for argv in shown]
        examples: list[tuple[int, tuple[str, ...]]] = []
        for line, playbook in doc.playbooks:
            example = Path(workdir) / f"example-{line}.yml"
            example.write_text(playbook, encoding="utf-8")
            examples.append((line, (str(example),)))
        start_syntax_checks([argv for argv in check_argvs if argv] + [argv for _, argv in examples])
        for line, argv in examples:
            if result := syntax_check(argv):
                problems.append(f"{name}:{line}: the example playbook fails --syntax-check: {result}")
        for command, argvs in parsed:
            for argv in argvs:
                for problem in check_command(argv, doc, Path(workdir), command.inline):
                    problems.append(f"{name}:{command.line}: {problem}\n    {command.text}")
    if path is not None:
        problems += [f"{name}: {problem}" for problem in broken_links(path, text)]
    problems += [f"{name}: {problem}" for problem in missing_prose_paths(text)]
    return problems


DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "roles").glob("*/README.md")),
]


def _doc_param(path: Path) -> object:
    return pytest.param(path, id=path.relative_to(ROOT).as_posix())


@pytest.mark.parametrize("path", [_doc_param(p) for p in DOCS])
def test_the_commands_a_doc_shows_work_as_shown(path: Path) -> None:
    name = path.relative_to(ROOT).as_posix()
    problems = doc_problems(name, path.read_text(encoding="utf-8"), path)
    assert not problems, "\n".join(problems)


def test_the_docs_show_commands_for_every_checker() -> None:
    """The extraction finds the commands: were it to find none, every doc would pass."""
    seen = {
        program(argv)
        for path in DOCS
        for command in parse_doc(path.name, path.read_text(encoding="utf-8")).commands
        for argv in simple_commands(command.text)
    }
    assert {"onnxfleet", "ansible-playbook", "make", "curl"} <= seen


# --- the check itself, on synthetic docs ------------------------------------------------

SYNTHETIC_OK = """
```sh
make demo   # a comment
state=~/.local/state/onnxfleet/onnxfleet
curl -s --cacert $state/tls/ca.pem -H "Authorization: Bearer $(cat $state/tokens/default)" \\
  https://127.0.0.1:8443/status
ansible-playbook playbooks/rollout.yml -e model_path=/path/to/model.onnx [-e model_version=V]
ansible onnxfleet:!workers -i inventory/local.docker.yml -b -m ansible.builtin.shell -a 'journalctl -n 5'
```

```console
$ onnxfleet load --url http://127.0.0.1:8080 -n 100 -c 5
requests        100 in 0.453 s
$ onnxfleet worker --model app/models/digits.onnx --bind 127.0.0.1:5000
```
"""


def test_a_synthetic_doc_of_true_commands_passes() -> None:
    assert doc_problems("ok.md", SYNTHETIC_OK) == []


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("onnxfleet load --url http://127.0.0.1:8080 --no-such-flag", "unrecognized arguments"),
        ("onnxfleet load --url http://127.0.0.1:8080 -c many", "invalid int value"),
        ("onnxfleet no-such-command", "invalid choice"),
        ("onnxfleet load --url http://127.0.0.1:8443 --cacert ca.pem", "--cacert with an http:// URL"),
        ("onnxfleet load --url http://fleet.example --token-file t", "a token over http://"),
        ("ansible workrs -b -a 'docker ps'", "['workrs'] are not groups of the inventory contract"),
        ("ansible workers -i inventory/no_such.yml -a 'docker ps'", "inventory 'inventory/no_such.yml'"),
        ("ansible onnxfleet -m ansible.builtin.no_such -a x", "no module 'ansible.builtin.no_such'"),
        ("ansible workers --no-such-flag -a 'docker ps'", "ansible rejects it"),
        ("make no-such-target", "make has no target 'no-such-target'"),
        ("ansible-playbook playbooks/no-such.yml", "playbook 'playbooks/no-such.yml' is not in"),
        ("ansible-playbook onnxfleet.serving.no_such", "'onnxfleet.serving.no_such' is not in the"),
        ("ansible-playbook site.yml --no-such-flag", "unrecognized arguments: --no-such-flag"),
        ("ansible-playbook site.yml -e '{\"broken\": '", "ansible-playbook --syntax-check fails"),
        ("ansible-playbook site.yml -i inventory/no_such.yml", "inventory 'inventory/no_such.yml'"),
        ("ansible-playbook site.yml -e fleet_wroker_count=6", "-e fleet_wroker_count: no playbook"),
        ("ansible-playbook site.yml -e '{\"fleet_admin_cidr\": []}'", "-e fleet_admin_cidr: no playbook"),
        ("curl --no-such-option https://127.0.0.1:8443/status", "curl has no option '--no-such-option'"),
        ("curl -s --cacert ca.pem http://127.0.0.1:8443/status", "answers only https"),
        ("curl -s -H 'Authorization: Bearer x' https://fleet.example/status", "needs --cacert"),
        ("curl -k https://127.0.0.1:8443/status", "--insecure"),
        ("jq . app/models/no-such.json", "'app/models/no-such.json' is not in the repository"),
        ("frobnicate --now", "no check for 'frobnicate'"),
        ("ssh -N -L 9000 admin@node", "ssh -G rejects the options"),
        ("python -m bench.no_such_bench", "python -m bench.no_such_bench: no such module"),
        ("python3 -m bench.no_such_bench", "python -m bench.no_such_bench: no such module"),
    ],
)
def test_a_synthetic_doc_of_a_wrong_command_fails(block: str, expected: str) -> None:
    problems = doc_problems("wrong.md", f"```sh\n{block}\n```\n")
    assert any(expected in problem for problem in problems), problems


def test_an_example_playbook_is_syntax_checked() -> None:
    example = "```yaml\n- hosts: workers\n  roles:\n    - role: onnxfleet.serving.{}\n```\n"
    assert doc_problems("r.md", example.format("app_image")) == []
    # run together with site.yml (same options), then alone to tell which one fails
    shown = "```sh\nansible-playbook site.yml\n```\n"
    problems = doc_problems("r.md", shown + example.format("no_such_role"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("r.md:5: the example playbook fails --syntax-check"), problems


def test_a_heredoc_made_vars_file_is_used_by_the_syntax_check(tmp_path: Path) -> None:
    made = '```sh\ncat > my.json <<EOF\n{"fleet_admin_cidrs": ["$IP/32"]}\nEOF\n```\n'
    assert doc_problems("d.md", made + "```sh\nansible-playbook site.yml -e @my.json\n```\n") == []
    broken = '```sh\ncat > my.json <<EOF\n{"fleet_admin_cidrs": [\nEOF\n```\n'
    assert doc_problems("d.md", broken + "```sh\nansible-playbook site.yml -e @my.json\n```\n")
    assert doc_problems("d.md", "```sh\nansible-playbook site.yml -e @absent.json\n```\n")


def test_a_missing_path_named_in_prose_fails() -> None:
    assert doc_problems("p.md", "See `playbooks/rollout.yml` and `meta/argument_specs.yml`.\n") == []
    problems = doc_problems("p.md", "See `playbooks/no-such.yml`.\n")
    assert problems == ["p.md: line 1: `playbooks/no-such.yml` is not in the repository"]


def test_a_broken_link_or_anchor_fails(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading\n")
    page = tmp_path / "page.md"
    good = "See [x](other.md#a-code-heading) and [y](other.md) and [z](https://example.com/a#b).\n"
    assert broken_links(page, good) == []
    assert broken_links(page, "[x](missing.md)\n")
    assert broken_links(page, "[x](other.md#no-such-heading)\n")


@pytest.mark.parametrize(
    ("prose", "expected"),
    [
        ("Run `make no-such-target` first.", "make has no target"),
        ("Try `onnxfleet load --url http://127.0.0.1:8080 --no-such-flag`.", "unrecognized arguments"),
        ("The `onnxfleet no-such-command` command.", "onnxfleet has no command"),
        ("Run `.venv/bin/pytest tests/no_such_dir`.", "'tests/no_such_dir' is not in the repository"),
    ],
)
def test_a_wrong_command_in_prose_fails(prose: str, expected: str) -> None:
    problems = doc_problems("prose.md", f"Intro.\n\n{prose}\n")
    assert any(expected in problem for problem in problems), problems


def test_prose_with_placeholders_or_only_a_command_name_is_not_a_command() -> None:
    prose = "`onnxfleet worker` and `onnxfleet load --cacert CA` and `make test TEST_JOBS=1`.\n"
    prose += "Its `ansible-playbook --syntax-check` runs.\n"
    commands = [c.text for c in parse_doc("p.md", prose).commands]
    assert commands == ["onnxfleet worker", "make test TEST_JOBS=1", "ansible-playbook --syntax-check"]
    assert doc_problems("p.md", prose) == []
