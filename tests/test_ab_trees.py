"""benchmarks/ab_trees.sh, which unpacks commits for a GPU A/B, in a repository of its own."""

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ab_trees.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def _run(repo: Path, *revs: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "benchmarks" / "ab_trees.sh"), *revs],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def repo(tmp_path):
    """A repository with the script and two commits of a file: 'first', then 'second'."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / "ab_trees.sh")
    _git(tmp_path, "init", "-q")
    for text in ("first", "second"):
        (tmp_path / "step.txt").write_text(text)
        _git(tmp_path, "add", "-A")
        _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", text)
    return tmp_path


def test_commits_are_unpacked_oldest_first_and_the_carry_list_printed(repo):
    (repo / ".ab-7").mkdir()  # left from an earlier A/B: removed
    done = _run(repo, "HEAD~1", "HEAD")
    assert done.returncode == 0, done.stderr
    assert (repo / ".ab-1" / "step.txt").read_text() == "first"
    assert (repo / ".ab-2" / "step.txt").read_text() == "second"
    assert (repo / ".ab-1" / "benchmarks" / "ab_trees.sh").exists()
    assert not (repo / ".ab-7").exists()
    assert 'carry: [".ab-1", ".ab-2"]' in done.stdout


def test_a_name_that_is_no_commit_changes_nothing(repo):
    assert _run(repo, "HEAD").returncode == 0
    failed = _run(repo, "HEAD", "no-such-rev")
    assert failed.returncode == 2
    assert "no-such-rev is not a commit of this repository" in failed.stderr
    assert (repo / ".ab-1" / "step.txt").read_text() == "second"  # the earlier tree kept
    usage = _run(repo)
    assert usage.returncode == 2 and "usage:" in usage.stderr
