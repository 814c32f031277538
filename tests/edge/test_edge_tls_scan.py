"""sslyze (PyPI, in its own venv under .cache/sslyze) scans the edge as a TLS auditor
would, against Mozilla's "intermediate" configuration plus the known attacks; the same scan
of a deliberately weakened edge shows that it would notice."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.edge.edge_support import FrontDoor
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet
from tests.support import ROOT
from tests.worker.worker_support import pinned_venv

PROTOCOLS_REFUSED = ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1")
# Mozilla intermediate, TLS 1.2 (IANA names, as sslyze reports them)
TLS12_ALLOWED = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}


@pytest.fixture(scope="module")
def sslyze() -> Path:
    bin_dir = pinned_venv(ROOT / ".cache" / "sslyze", Path(__file__).parent / "sslyze-requirements.txt")
    return bin_dir / "sslyze"


def scan(sslyze: Path, front: FrontDoor) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = front.work / "sslyze.json"
    proc = subprocess.run(
        [
            str(sslyze),
            "--mozilla_config=intermediate",
            f"--certinfo_ca_file={front.pki.ca_file}",
            f"--json_out={out}",
            f"localhost:{front.ports.tls}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    results = json.loads(out.read_text())["server_scan_results"]
    assert [r["scan_status"] for r in results] == ["COMPLETED"], proc.stdout[-3000:]
    return proc, results[0]["scan_result"]


def weaknesses(found: dict[str, Any]) -> list[str]:
    """What a TLS audit would flag in sslyze's results."""
    result = {name: entry["result"] for name, entry in found.items() if entry.get("result") is not None}
    flagged = [
        f"{p} accepted" for p in PROTOCOLS_REFUSED if result[f"{p}_cipher_suites"]["accepted_cipher_suites"]
    ]
    tls12 = {c["cipher_suite"]["name"] for c in result["tls_1_2_cipher_suites"]["accepted_cipher_suites"]}
    flagged += [f"TLS 1.2 cipher {name}" for name in sorted(tls12 - TLS12_ALLOWED)]
    checks = {
        "compression": result["tls_compression"]["supports_compression"],
        "heartbleed": result["heartbleed"]["is_vulnerable_to_heartbleed"],
        "ccs injection": result["openssl_ccs_injection"]["is_vulnerable_to_ccs_injection"],
        "ROBOT": result["robot"]["robot_result"].startswith("VULNERABLE"),
        "no secure renegotiation": not result["session_renegotiation"]["supports_secure_renegotiation"],
        "client renegotiation": result["session_renegotiation"]["is_vulnerable_to_client_renegotiation_dos"],
        "no downgrade protection": not result["tls_fallback_scsv"]["supports_fallback_scsv"],
    }
    flagged += [name for name, bad in checks.items() if bad]
    deployment = result["certificate_info"]["certificate_deployments"][0]
    if not any(
        p["trust_store"]["name"] == "Supplied CA file" and p["was_validation_successful"]
        for p in deployment["path_validation_results"]
    ):
        flagged.append("certificate not verified by the fleet's CA")
    return flagged


def test_sslyze_finds_no_weak_protocol_or_cipher(sslyze: Path, pki: Pki, sim_fleet: SimFleet) -> None:
    with FrontDoor(pki, sim_fleet) as front:
        proc, found = scan(sslyze, front)
    assert weaknesses(found) == []
    assert "OK - Compliant." in proc.stdout, proc.stdout[-3000:]
    assert proc.returncode == 0


def test_the_same_scan_flags_a_weakened_edge(sslyze: Path, pki: Pki, sim_fleet: SimFleet) -> None:
    weak = {"edge_tls_min_version": "TLSv1.0", "edge_tls_ciphers": ["ALL", "@SECLEVEL=0"]}
    with FrontDoor(pki, sim_fleet, edge=weak) as front:
        proc, found = scan(sslyze, front)
    flagged = weaknesses(found)
    assert {"tls_1_0 accepted", "tls_1_1 accepted", "TLS 1.2 cipher TLS_RSA_WITH_AES_128_CBC_SHA"} <= set(
        flagged
    )
    assert "FAILED - Not compliant." in proc.stdout
    assert proc.returncode != 0
