"""The docs the collection ships hold in the artifact: Galaxy shows README.md and an
installed collection carries docs/ and the role READMEs, so a relative link in them must
reach a file the artifact has (a developer file, `tests/` or `bench/`, is named in a
`code span` instead), and what README's "Install from Galaxy" has a user copy or run is in
it. The artifact is built as users get it: ``ansible-galaxy collection build``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from tests.support import ROOT
from tests.test_docs_commands import _prose_lines, parse_doc, simple_commands


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """The paths (files and their directories) in the built collection."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-galaxy"),
            "collection",
            "build",
            str(ROOT),
            "--output-path",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = out.glob("onnxfleet-serving-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = {member.name.rstrip("/") for member in tar.getmembers()}
    parents = {str(parent) for name in names for parent in PurePosixPath(name).parents}
    return frozenset(names | parents)


def links_outside(doc: str, text: str, shipped: frozenset[str]) -> list[str]:
    """The relative links of ``doc`` (a path in the artifact) to a file it does not ship."""
    prose = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    problems = []
    for match in re.finditer(r"\]\(([^)\s]+)\)", prose):
        target = match.group(1).partition("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        resolved = os.path.normpath(str(PurePosixPath(doc).parent / target))
        if resolved not in shipped:
            problems.append(f"{doc}: link ({match.group(1)}): {resolved} is not in the collection")
    return problems


def test_every_link_in_a_shipped_doc_reaches_a_shipped_file(artifact: frozenset[str]) -> None:
    docs = sorted(name for name in artifact if name.endswith(".md"))
    assert {"README.md", "docs/operations.md", "roles/fleet/README.md"} <= set(docs)
    problems = [
        p for doc in docs for p in links_outside(doc, (ROOT / doc).read_text(encoding="utf-8"), artifact)
    ]
    assert not problems, "\n".join(problems)


def test_a_link_to_a_file_left_out_is_found() -> None:
    shipped = frozenset({"README.md", "docs", "docs/aws.md"})
    assert links_outside("docs/x.md", "[a](aws.md#cost) [b](https://x.org/y) [c](#top)\n", shipped) == []
    assert links_outside("README.md", "See [bench](bench/README.md).\n", shipped) == [
        "README.md: link (bench/README.md): bench/README.md is not in the collection"
    ]
    assert links_outside("docs/x.md", "`[not](a link)` [up](../tests/x.py)\n", shipped) == [
        "docs/x.md: link (../tests/x.py): tests/x.py is not in the collection"
    ]


def galaxy_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## Install from Galaxy", 1)[1].split("\n## ", 1)[0]


def test_what_install_from_galaxy_uses_is_in_the_collection(artifact: frozenset[str]) -> None:
    section = galaxy_section()
    named: set[str] = set()
    for line in _prose_lines(section):
        named |= {m.group(1).rstrip("/") for m in re.finditer(r"`([\w./-]+/[\w./-]*)`", line)}
    playbooks: set[str] = set()
    for command in parse_doc("README.md", section).commands:
        for argv in simple_commands(command.text):
            for arg in argv[1:]:
                if arg.startswith("onnxfleet.serving."):
                    playbooks.add(f"playbooks/{arg.removeprefix('onnxfleet.serving.')}.yml")
                elif "/serving/" in arg:
                    named.add(arg.split("/serving/", 1)[1])
                elif re.fullmatch(r"\w+/[\w./-]+\.yml", arg):
                    named.add(arg)
    assert {"app", "inventory", "inventory/local.docker.yml", "playbooks/site.yml"} <= named | playbooks
    # `group_vars/` said of the copied inventory/ is inventory/group_vars
    missing = sorted(
        path
        for path in named | playbooks
        if path not in artifact and not any(name.endswith(f"/{path}") for name in artifact)
    )
    assert not missing, f"README's Install from Galaxy names what the collection does not ship: {missing}"
