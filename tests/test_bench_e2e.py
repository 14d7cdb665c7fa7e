"""Smoke test of bench/bench_e2e.py: the end-to-end benchmark still works.

Runs ``bench_e2e.py --smoke`` (one setup: FastAPI + Cloudflare header under
uvicorn, bare and certgate, allowed and refused traffic, a fraction of a
second per sample) and checks the output format and that the generator's
certificates really produced 200s for allowed traffic and certgate's 403s
for refused traffic (the bare app answers both with 200). Targets are not
judged here: the exit status may be 0 or 1, but never 2 (the bench's own
failure).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_e2e_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = proc.stdout
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert "certgate end-to-end benchmark (--smoke)" in text
    assert "ERROR" not in text
    assert "verdicts:" in text
    assert "keep-alive x100, allowed, 1,000 certs" in text
    assert "keep-alive x100, refused, 1,000 certs" in text
    assert any(line.lstrip().startswith(("PASS", "FAIL")) for line in text.splitlines())

    result = json.loads(out.read_text())
    cases = {case["case"]: case for case in result["cases"]}
    assert set(cases) == {"ka100-allowed-1000", "ka100-refused-1000"}
    for key, certgate_status in (("ka100-allowed-1000", "200"), ("ka100-refused-1000", "403")):
        variants = {v["variant"]: v for v in cases[key]["variants"]}
        bare, gated = variants["bare"], variants["certgate"]
        assert set(bare["statuses"]) == {"200"}, bare["statuses"]
        assert set(gated["statuses"]) == {certgate_status}, gated["statuses"]
        assert gated["statuses"][certgate_status] > 0
        assert bare["req_per_s_median"] > 0
        assert gated["req_per_s_median"] > 0
        assert gated["ratio_to_bare_median"] > 0
        assert gated["p99_ms_median"] >= gated["p50_ms_median"] > 0
        assert gated["errors"] == 0
        # the gate's counters were read through the exempt stats route
        assert gated["cache"] is not None
        assert (
            gated["cache"]["hits"]
            + gated["cache"]["misses"]
            + gated["cache"]["refusal_hits"]
            + gated["cache"]["refusal_misses"]
            > 0
        )
    assert result["problems"] == []
    assert all(isinstance(v["pass"], bool) for v in result["verdicts"])
