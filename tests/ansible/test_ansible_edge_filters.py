"""The edge's filters: the tokens file the node gets (read back by the orchestrator's own
parser, which must accept exactly the tokens given and no other), and the certificate's
subject alternative names."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.onnxfleet.serving.plugins.filter.edge import api_token_lines, subject_alt_names

from onnxfleet.orchestrator.tokens import Tokens, digest, load_tokens

TOKENS = [{"name": "ci", "token": "a" * 43}, {"name": "alice@lab", "token": "s3cret-token-of-alice"}]


def test_the_orchestrator_reads_the_lines_as_the_tokens_given(tmp_path: Path) -> None:
    lines = api_token_lines(TOKENS)
    assert all("a" * 43 not in line and "s3cret" not in line for line in lines)
    path = tmp_path / "api-tokens"
    path.write_text("\n".join(lines) + "\n")
    tokens = Tokens(load_tokens(path))
    assert tokens.check(b"Bearer " + ("a" * 43).encode()) == "ci"
    assert tokens.check(b"Bearer s3cret-token-of-alice") == "alice@lab"
    assert tokens.check(b"Bearer " + ("a" * 42).encode()) is None
    assert tokens.check(b"Bearer " + digest("a" * 43).encode()) is None


def test_an_empty_list_gives_no_line() -> None:
    assert api_token_lines([]) == []


@pytest.mark.parametrize(
    ("tokens", "says"),
    [
        ({"name": "a", "token": "x" * 20}, "expected a list"),
        ([{"name": "a"}], "exactly the keys name and token"),
        ([{"name": "two words", "token": "x" * 20}], "one word"),
        ([{"name": "#comment", "token": "x" * 20}], "one word"),
        ([{"name": "a", "token": "short"}], "at least 16 characters"),
        ([{"name": "a", "token": " " + "x" * 20}], "surrounding spaces"),
        ([{"name": "a", "token": "x" * 20}, {"name": "a", "token": "y" * 20}], "given twice"),
    ],
)
def test_bad_tokens_are_refused_with_what_was_expected(tokens: object, says: str) -> None:
    with pytest.raises(AnsibleFilterError, match=says):
        api_token_lines(tokens)


def test_subject_alt_names() -> None:
    names = ["localhost", "127.0.0.1", "172.18.0.5", "", None, "EC2-1-2-3-4.x.aws.com", "::1", "127.0.0.1"]
    assert subject_alt_names(names) == [
        "DNS:localhost",
        "IP:127.0.0.1",
        "IP:172.18.0.5",
        "DNS:ec2-1-2-3-4.x.aws.com",
        "IP:::1",
    ]
