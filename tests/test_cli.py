"""The ops CLI against a real directory of fake processes."""

from __future__ import annotations

import json

from netpoint_metrics.cli import main
from tests.core_support import FakeProcess, key

K = key("c", "c_total", {"view": "x"})


def test_inspect_compact_collect_wipe(tmp_path, capsys) -> None:
    d = str(tmp_path)
    live, dead = FakeProcess(d).start(), FakeProcess(d).start()
    live.add("counter", K, 2)
    dead.add("counter", K, 3)
    dead.kill()
    assert main(["--dir", d, "inspect", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    states = {p["ident"]: p["alive"] for p in report["processes"]}
    assert states == {live.ident: True, dead.ident: False}
    assert main(["--dir", d, "compact"]) == 0
    assert "folded 1 dead" in capsys.readouterr().out
    assert main(["--dir", d, "collect"]) == 0
    assert 'c_total{view="x"} 5.0' in capsys.readouterr().out
    assert main(["--dir", d, "wipe"]) == 1  # a live writer is still there
    assert "live process" in capsys.readouterr().err
    live.kill()
    assert main(["--dir", d, "wipe"]) == 0
    capsys.readouterr()
    assert main(["--dir", d, "collect"]) == 0
    assert "c_total" not in capsys.readouterr().out


def test_doctor_flags_unsafe_directory_and_corrupt_files(tmp_path, capsys) -> None:
    (tmp_path / "counter_123-abcdefabcdef.db").write_bytes(b"\x01\x02\x03")
    assert main(["--dir", str(tmp_path), "doctor"]) == 1
    assert "FAIL" in capsys.readouterr().out
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path)
    assert main(["--dir", str(link), "doctor"]) == 1
    assert "symlink" in capsys.readouterr().out
