"""An unusable SQLite location is one line and exit status 2, never a traceback (issue 14,
defect 9); a missing folder is named, not created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_server(database: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullwake", "server", "--port", "0", "--database", database],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pullwake server: "), lines
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines
    assert "listening" not in result.stdout


def test_a_file_where_the_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    result = run_server(f"sqlite:///{tmp_path / 'plain' / 'x.db'}", tmp_path)
    assert_one_line_exit_2(result, "is not a folder")


def test_etc_passwd_as_a_folder(tmp_path: Path) -> None:
    if not Path("/etc/passwd").is_file():
        pytest.skip("needs /etc/passwd")
    assert_one_line_exit_2(run_server("sqlite:////etc/passwd/x.db", tmp_path), "/etc/passwd")


def test_a_missing_folder_is_named_and_not_created(tmp_path: Path) -> None:
    result = run_server(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}", tmp_path)
    assert_one_line_exit_2(result, "does not exist", str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


def test_a_folder_that_takes_no_files(tmp_path: Path) -> None:
    if Path("/proc/self").is_dir():
        # Even root cannot create files in /proc.
        assert_one_line_exit_2(run_server("sqlite:////proc/x.db", tmp_path), "cannot write")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            result = run_server(f"sqlite:///{locked / 'x.db'}", tmp_path)
        finally:
            locked.chmod(0o700)
        assert_one_line_exit_2(result, "cannot write")


def test_a_folder_named_as_the_database(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    assert_one_line_exit_2(run_server(f"sqlite:///{tmp_path / 'db'}", tmp_path), "is a folder")
