"""The layout keeps the architecture visible: what lives where, checked from the outside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nebula_core.allinone.opsfiles import ops_path

REPO = Path(__file__).resolve().parents[2]
NEBULA = [str(Path(sys.executable).with_name("nebula"))]


def test_ops_holds_files_and_scripts_but_no_python() -> None:
    python = sorted(str(p.relative_to(REPO)) for p in (REPO / "ops").rglob("*.py"))
    assert python == [], "Python that the product runs belongs in a package, not under ops/"


def test_the_operations_files_are_found_where_they_ship() -> None:
    assert ops_path("guest", "build-tiny.sh").is_file()
    assert ops_path("host", "libvirt-up.sh").is_file()
    assert ops_path("nats", "single.conf").is_file()


def test_nebula_schemas_writes_where_it_is_told_and_checks_it(tmp_path: Path) -> None:
    """From any directory: `--write --out` makes the files, a check then finds no drift,
    and a changed file is reported with a non-zero exit."""
    out = tmp_path / "published"
    wrote = subprocess.run(
        [*NEBULA, "schemas", "--write", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True
    )
    assert wrote.returncode == 0, wrote.stderr
    assert (out / "asyncapi.json").is_file() and (out / "openapi.json").is_file()
    assert (out / "events" / "instance.created.json").is_file()
    same = subprocess.run([*NEBULA, "schemas", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    (out / "kv" / "Heartbeat.json").write_text("{}\n")
    drifted = subprocess.run([*NEBULA, "schemas", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert drifted.returncode == 1
    assert "differs: kv/Heartbeat.json" in drifted.stderr
