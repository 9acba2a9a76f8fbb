"""util.atomic: every file the project writes appears whole or not at all, and a full disk is one
line naming the file. Real limits: a small tmpfs (root may mount one) for a full disk, and
RLIMIT_FSIZE in a child process (any user) for the file size limit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from partial_fc.config import dump_yaml, load_yaml
from partial_fc.config.train import TrainConfig
from partial_fc.util.atomic import write_json_atomic, write_text_atomic
from tests.disk import small_disk as mount_small_disk

DISK_BYTES = 256 << 10


@pytest.fixture
def small_disk(tmp_path):
    with mount_small_disk(tmp_path, DISK_BYTES) as mount:
        yield mount


def test_writes_are_whole_and_readable(tmp_path: Path) -> None:
    target = write_json_atomic(tmp_path / "a" / "summary.json", {"loss": 1.5, "steps": 3})
    assert target.read_text() == '{\n  "loss": 1.5,\n  "steps": 3\n}\n'
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]  # no temporary left


def test_a_full_disk_is_one_line_and_keeps_the_old_file(small_disk: Path) -> None:
    cfg = load_yaml("configs/demo.yaml", TrainConfig)
    path = dump_yaml(cfg, small_disk / "config.yaml")  # the resumed run's config, first written
    before = path.read_text()
    filler = small_disk / "filler"
    with pytest.raises(OSError):
        filler.write_bytes(b"\0" * DISK_BYTES)  # the disk is now full
    with pytest.raises(ValueError, match=r"^the disk is full writing .*/small/config\.yaml: .* free on .*/small; make room"):
        dump_yaml(cfg, path)
    assert path.read_text() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["config.yaml", "filler"]


def test_the_file_size_limit_is_named(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import resource, signal
        from partial_fc.util.atomic import write_text_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            write_text_atomic({str(tmp_path / "big.txt")!r}, "x" * (1 << 20))
        except ValueError as e:
            print(e)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith(f"the file size limit is reached writing {tmp_path / 'big.txt'}: "), done
    assert list(tmp_path.iterdir()) == []


def test_text_round_trip(tmp_path: Path) -> None:
    assert write_text_atomic(tmp_path / "t.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
