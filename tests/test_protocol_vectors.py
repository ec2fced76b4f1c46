"""Every test vector gives its expected verdict on CPython and on the real
MicroPython interpreter, and both interpreters agree field for field."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_micropython
from tests.vector_runner import run_file

VECTOR_FILES = sorted((ROOT / "protocol" / "vectors").glob("*.json"))


def expected(path: Path) -> dict[str, dict]:
    return {v["name"]: v["expect"] for v in json.loads(path.read_text())["vectors"]}


def test_vector_files_cover_every_kind_and_many_rejection_reasons() -> None:
    kinds = set()
    reasons = set()
    for path in VECTOR_FILES:
        for exp in expected(path).values():
            if exp["ok"]:
                kinds.add(exp["fields"]["kind"])
            else:
                reasons.add(exp["reason"])
    assert kinds == {1, 2, 3, 4, 5, 6}
    from protocol.errors import REASONS
    assert reasons == set(REASONS)


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.name)
def test_vectors_pass_on_cpython(path: Path) -> None:
    want = expected(path)
    got = {r["name"]: r["got"] for r in run_file(str(path))}
    assert got == want


@pytest.mark.micropython
@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.name)
def test_vectors_pass_on_micropython_and_agree_with_cpython(path: Path) -> None:
    proc = run_micropython(ROOT / "tests" / "vector_runner.py", str(path))
    assert proc.returncode == 0, proc.stderr.decode()
    got = {}
    for line in proc.stdout.decode().splitlines():
        r = json.loads(line)
        got[r["name"]] = r["got"]
    assert got == expected(path)
    assert got == {r["name"]: r["got"] for r in run_file(str(path))}


def test_vectors_are_up_to_date_with_the_generator(tmp_path: Path, monkeypatch) -> None:
    from protocol.vectors import make_vectors
    monkeypatch.setattr(make_vectors, "HERE", tmp_path)
    make_vectors.write()
    for path in VECTOR_FILES:
        assert (tmp_path / path.name).read_text() == path.read_text(), (
            "%s is stale: run make vectors" % path.name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
