"""Precomputed inputs (the seed's WSSS_maps/ and Peak_points/): the readers, and the wsss and
peaks stages reading them in place of computing (``wsss.source`` / ``peaks.source: read``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bestie.config import parse_params
from bestie.data.png import read_label_png, write_label_png
from bestie.data.precomputed import input_dir, read_label_map, read_point_file
from bestie.errors import BestieError
from bestie.peaks import read_peaks

from .helpers import run_stage, write_params

ID = "2007_000063"  # the VOC fixture's one image: 500 x 375, chair (8) and dog (11)
SIZE = (375, 500)


def test_point_file_rows_with_and_without_score(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("10 20 11 0.5\n\n499 374.5 8\n")
    np.testing.assert_array_equal(read_point_file(path, 20, SIZE), [[10, 20, 11, 0.5], [499, 374.5, 8, 1.0]])
    path.write_text("")
    assert read_point_file(path, 20, SIZE).shape == (0, 4)


@pytest.mark.parametrize("text, fragment", [
    ("10 20\n", "p.txt:1: expected 'x y class_index score'"),
    ("10 20 1 0.5 7\n", "p.txt:1: expected"),
    ("10 20 dog 0.5\n", "p.txt:1: expected"),
    ("1 1 1\n10 20 1.5 0.5\n", "p.txt:2: expected"),
    ("10 nan 1 0.5\n", "p.txt:1: expected"),
    ("10 20 20 0.5\n", "p.txt:1: class index 20 out of range 0..19"),
    ("10 20 -1 0.5\n", "p.txt:1: class index -1 out of range"),
    ("500 20 1 0.5\n", "p.txt:1: point (500, 20) outside the 500x375 image"),
    ("10 -0.5 1 0.5\n", "p.txt:1: point (10, -0.5) outside"),
])
def test_point_file_faults_are_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "p.txt"
    path.write_text(text)
    with pytest.raises(BestieError) as error:
        read_point_file(path, 20, SIZE)
    message = str(error.value)
    assert fragment in message and "\n" not in message


def test_label_map_checks_size_and_values(tmp_path: Path) -> None:
    labels = np.zeros(SIZE, np.uint8)
    labels[:10, :10], labels[-1, -1] = 21 - 1, 255
    write_label_png(tmp_path / "ok.png", labels)
    np.testing.assert_array_equal(read_label_map(tmp_path / "ok.png", 20, SIZE), labels)

    write_label_png(tmp_path / "small.png", labels[:-1])
    with pytest.raises(BestieError, match=r"small.png: map is 500x374 but its image is 500x375$"):
        read_label_map(tmp_path / "small.png", 20, SIZE)
    labels[5, 5] = 21
    write_label_png(tmp_path / "class.png", labels)
    with pytest.raises(BestieError, match=r"class.png: value 21 is no class"):
        read_label_map(tmp_path / "class.png", 20, SIZE)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(BestieError, match=r"junk.png: unreadable label map"):
        read_label_map(tmp_path / "junk.png", 20, SIZE)
    with pytest.raises(BestieError, match=r"absent.png: label map not found"):
        read_label_map(tmp_path / "absent.png", 20, SIZE)


def test_input_dir_is_under_the_data_root_unless_absolute(tmp_path: Path) -> None:
    (tmp_path / "root" / "WSSS_maps").mkdir(parents=True)
    assert input_dir("WSSS_maps", tmp_path / "root", "wsss.maps_dir") == tmp_path / "root" / "WSSS_maps"
    assert input_dir(str(tmp_path / "root"), "elsewhere", "wsss.maps_dir") == tmp_path / "root"
    with pytest.raises(BestieError, match=r"root/maps: wsss.maps_dir folder not found"):
        input_dir("maps", tmp_path / "root", "wsss.maps_dir")


def test_sources_are_validated_and_default_to_compute() -> None:
    params = parse_params({})
    assert (params.wsss.source, params.peaks.source) == ("compute", "compute")
    with pytest.raises(BestieError, match="wsss.source must be one of compute | read"):
        parse_params({"wsss": {"source": "file"}})
    with pytest.raises(BestieError, match="peaks.points_dir must not be empty"):
        parse_params({"peaks": {"points_dir": ""}})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, voc_fixture_root: Path) -> Path:
    """A copy of the VOC fixture that holds WSSS_maps/ (the ground truth: they score 100) and
    Peak_points/."""
    root = tmp_path_factory.mktemp("root") / "voc"
    shutil.copytree(voc_fixture_root, root)
    (root / "WSSS_maps").mkdir()
    write_label_png(root / "WSSS_maps" / f"{ID}.png", read_label_png(root / "SegmentationClass" / f"{ID}.png"))
    (root / "Peak_points").mkdir()
    (root / "Peak_points" / f"{ID}.txt").write_text("120 200 11 0.9\n300.5 100 8 0.25\n40 50 8\n")
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_root: Path) -> Path:
    """A project prepared on ``data_root`` that reads both inputs; no classifier is ever trained."""
    project = tmp_path_factory.mktemp("project")
    write_params(project / "params.yaml", {
        "data": {"root": str(data_root)}, "wsss": {"source": "read", "gallery": 1}, "peaks": {"source": "read"},
    })
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        result = run_stage("prepare", project)
        assert result.returncode == 0, result.stderr
        yield project


def test_wsss_stage_reads_the_maps(project: Path, data_root: Path) -> None:
    result = run_stage("wsss", project, "--model", "data/models/absent.pt")  # reading needs no model
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(
        read_label_png(project / "data/wsss" / f"{ID}.png"), read_label_png(data_root / "WSSS_maps" / f"{ID}.png")
    )
    metrics = json.loads((project / "metrics/wsss.json").read_text())
    assert metrics["num_evaluated"] == 1 and metrics["miou"] == 100.0 and "miou_raw_cam" not in metrics
    assert (project / f"metrics/gallery/wsss/{ID}.png").is_file()


def test_peaks_stage_reads_the_points(project: Path) -> None:
    result = run_stage("peaks", project, "--model", "data/models/absent.pt")
    assert result.returncode == 0, result.stderr
    peaks = read_peaks(project / "data/peaks/peaks.tsv")
    np.testing.assert_allclose(peaks[ID], [[120, 200, 11, 0.9], [300.5, 100, 8, 0.25], [40, 50, 8, 1.0]])
    metrics = json.loads((project / "metrics/peaks.json").read_text())
    assert metrics["num_instances"] == 2 and metrics["num_kept_peaks"] == 2  # pseudo_thresh 0.3 drops the 0.25


@pytest.mark.parametrize("stage, key, name, fragment", [
    ("wsss", "maps_dir", f"{ID}.png", ": map is 500x374 but its image is 500x375"),
    ("peaks", "points_dir", f"{ID}.txt", ":1: class index 20 out of range 0..19"),
])
def test_a_bad_precomputed_file_stops_the_stage_in_one_line(
    project: Path, data_root: Path, tmp_path: Path, stage: str, key: str, name: str, fragment: str
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    if stage == "wsss":
        write_label_png(bad / name, np.zeros((374, 500), np.uint8))
    else:
        (bad / name).write_text("1 2 20 0.5\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(project / "data" / "prepared")
    write_params(tmp_path / "params.yaml", {"data": {"root": str(data_root)}, stage: {"source": "read", key: str(bad)}})
    result = run_stage(stage, tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {bad / name}{fragment}"]
    assert not (tmp_path / "data" / stage).exists() and not (tmp_path / "metrics").exists()
