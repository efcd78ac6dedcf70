"""A resumable state is keyed by the run: same config and inputs, same fingerprint; any change, another."""

from __future__ import annotations

from bestie.fingerprint import run_fingerprint


def test_fingerprint_follows_config_and_input_bytes(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"aa")
    (folder / "b.png").write_bytes(b"bb")
    annotations = tmp_path / "train.json"
    annotations.write_text("{}")
    base = run_fingerprint({"lr": 0.1, "sizes": [1, 2]}, [folder, annotations])
    assert len(base) == 16 and int(base, 16) >= 0
    assert run_fingerprint({"sizes": [1, 2], "lr": 0.1}, [folder, annotations]) == base  # key order is irrelevant
    assert run_fingerprint({"lr": 0.2, "sizes": [1, 2]}, [folder, annotations]) != base
    assert run_fingerprint({"lr": 0.1, "sizes": [1, 2]}, [annotations, folder]) != base  # inputs are ordered

    annotations.write_text("{ }")
    changed_file = run_fingerprint({"lr": 0.1, "sizes": [1, 2]}, [folder, annotations])
    assert changed_file != base
    (folder / "b.png").rename(folder / "c.png")  # same bytes under another name
    assert run_fingerprint({"lr": 0.1, "sizes": [1, 2]}, [folder, annotations]) != changed_file
