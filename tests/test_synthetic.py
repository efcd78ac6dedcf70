"""The synthetic datasets (every style): layout, mask consistency, determinism and difficulty."""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bestie.config import SynthesizeParams
from bestie.data.png import read_label_png
from bestie.data.synthetic import (
    CLASS_NAMES,
    STYLES,
    dataset_statistics,
    generate,
    render_image,
    statistics_from_root,
    void_band,
)

FILES = (
    ("JPEGImages", "jpg"),
    ("SegmentationClass", "png"),
    ("SegmentationObject", "png"),
    ("Annotations", "xml"),
)
SMALL = SynthesizeParams(num_train=8, num_val=4, num_classes=4, max_classes_per_image=3)


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module", params=sorted(STYLES))
def style(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, style: str) -> Path:
    path = tmp_path_factory.mktemp(f"synthetic_{style}")
    generate(path, dataclasses.replace(SMALL, style=style))
    return path


@pytest.fixture(scope="module")
def samples() -> list:
    """40 images with the default params."""
    return [render_image(SynthesizeParams(), "train", i) for i in range(40)]


def test_layout(root: Path, style: str) -> None:
    assert (root / "classes.txt").read_text().splitlines() == list(STYLES[style].class_names[:4])
    assert _ids(root, "train") == [f"train_{i:06d}" for i in range(8)]
    assert _ids(root, "val") == [f"val_{i:06d}" for i in range(4)]
    for image_id in _ids(root, "train") + _ids(root, "val"):
        for sub, ext in FILES:
            assert (root / sub / f"{image_id}.{ext}").is_file(), (sub, image_id)
        with Image.open(root / "SegmentationObject" / f"{image_id}.png") as png:
            assert png.mode == "P"


def test_image_size_within_bounds_and_equal_to_masks(root: Path) -> None:
    for image_id in _ids(root, "train") + _ids(root, "val"):
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as jpeg:
            assert jpeg.mode == "RGB" and jpeg.format == "JPEG"
            width, height = jpeg.size
        assert SMALL.min_side <= width <= SMALL.max_side
        assert SMALL.min_side <= height <= SMALL.max_side
        assert read_label_png(root / "SegmentationClass" / f"{image_id}.png").shape == (height, width)
        assert read_label_png(root / "SegmentationObject" / f"{image_id}.png").shape == (height, width)


def test_masks_agree(root: Path, style: str) -> None:
    for image_id in _ids(root, "train") + _ids(root, "val"):
        classes = read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        objects = read_label_png(root / "SegmentationObject" / f"{image_id}.png")
        np.testing.assert_array_equal(classes == 0, objects == 0)
        np.testing.assert_array_equal(classes == 255, objects == 255)
        ids = np.unique(objects[(objects != 0) & (objects != 255)])
        assert ids.tolist() == list(range(1, len(ids) + 1)), "instance ids must be 1..N"
        names = []
        for k in ids:
            (label,) = np.unique(classes[objects == k])  # one class an instance
            assert 1 <= label <= SMALL.num_classes
            names.append(STYLES[style].class_names[label - 1])
        # Annotations name the same instances, in the same order.
        xml = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
        assert xml.findtext("filename") == f"{image_id}.jpg"
        assert [o.findtext("name") for o in xml.iter("object")] == names
        assert xml.findtext("size/width") == str(objects.shape[1])


def test_render_image_matches_its_masks() -> None:
    sample = render_image(SMALL, "val", 3)
    assert sample.image.dtype == np.uint8 and sample.image.shape == (*sample.class_map.shape, 3)
    assert sample.object_map.max(initial=0, where=sample.object_map != 255) == len(sample.classes) >= 1
    for k, class_index in enumerate(sample.classes, start=1):
        assert set(np.unique(sample.class_map[sample.object_map == k])) == {class_index + 1}


def _tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(root: Path, style: str, tmp_path: Path) -> None:
    (tmp_path / "again").mkdir()
    generate(tmp_path / "again", dataclasses.replace(SMALL, style=style))
    assert _tree_bytes(tmp_path / "again") == _tree_bytes(root)

    (tmp_path / "other").mkdir()
    generate(tmp_path / "other", dataclasses.replace(SMALL, style=style, seed=1))
    other, first = _tree_bytes(tmp_path / "other"), _tree_bytes(root)
    assert other.keys() == first.keys()
    changed = [name for name in first if name.endswith(".jpg") and first[name] != other[name]]
    assert len(changed) == 12


def test_splits_differ() -> None:
    train, val = render_image(SMALL, "train", 0), render_image(SMALL, "val", 0)
    assert train.image.shape != val.image.shape or not np.array_equal(train.image, val.image)


def test_touching_same_class_share_with_defaults(samples: list) -> None:
    stats = dataset_statistics([s.class_map for s in samples], [s.object_map for s in samples], void_width=1)
    assert stats["touching_same_class_share"] >= 0.3


def test_one_instance_images_skip_the_forced_pair() -> None:
    params = SynthesizeParams(max_instances=1, max_classes_per_image=1, touching_share=1.0)
    sample = render_image(params, "train", 0)
    assert len(sample.classes) == 1


@pytest.mark.parametrize("style_name", sorted(STYLES))
@pytest.mark.parametrize("width", [0, 1, 3])
def test_void_band_on_every_instance_border(width: int, style_name: str) -> None:
    params = SynthesizeParams(void_width=width, style=style_name)
    reach = np.ones((3, 3), dtype=bool)
    for index in range(6):
        objects = render_image(params, "train", index).object_map
        instance = (objects != 0) & (objects != 255)
        if width == 0:
            assert not (objects == 255).any()
            continue
        assert (objects == 255).any()
        # No background pixel within `width` px of an instance: the band lies between.
        near = ndimage.binary_dilation(instance, reach, iterations=width)
        assert not (near & (objects == 0)).any()
        # Nor does an instance's label meet another's: they too are parted by the band.
        for k in np.unique(objects[instance]):
            grown = ndimage.binary_dilation(objects == k, reach, iterations=width)
            assert set(np.unique(objects[grown])) <= {int(k), 255}


def test_void_band_hand_worked() -> None:
    owner = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 2, 2, 0],
            [0, 1, 1, 2, 2, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    band = void_band(owner, 1)
    # Background next to any instance, and instance 1 where it meets the later instance 2.
    expected = np.array(
        [
            [1, 1, 1, 1, 1, 1],
            [1, 0, 1, 0, 0, 1],
            [1, 0, 1, 0, 0, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(band, expected)
    assert not void_band(owner, 0).any()


def _instance_hue_guesses(params: SynthesizeParams) -> tuple[np.ndarray, np.ndarray]:
    """(class, class guessed from the hue of the instance's mean colour) of every instance
    in 40 images: the nearest class hue centre."""
    classes, hues = [], []
    for i in range(40):
        sample = render_image(params, "train", i)
        for k, class_index in enumerate(sample.classes, start=1):
            red, green, blue = sample.image[sample.object_map == k].mean(0) / 255
            hues.append(colorsys.rgb_to_hsv(red, green, blue)[0])
            classes.append(class_index)
    classes, hues = np.asarray(classes), np.asarray(hues)
    assert len(np.unique(classes)) == params.num_classes
    centres = np.arange(params.num_classes) / params.num_classes
    distance = np.abs(hues[:, None] - centres[None])
    guesses = np.minimum(distance, 1 - distance).argmin(1)  # on the hue circle
    return classes, guesses


def test_colour_is_a_cue_to_the_class_not_a_label() -> None:
    # Default hue families (0.25 wide, centres 1/6 apart) overlap: the nearest hue centre
    # names the class about 2 times in 3 (0.083 / 0.125), not always; texture and shape
    # must do the rest.
    classes, guesses = _instance_hue_guesses(SynthesizeParams())
    assert 0.5 < (guesses == classes).mean() < 0.85


def test_any_hue_makes_colour_say_nothing_about_the_class() -> None:
    classes, guesses = _instance_hue_guesses(SynthesizeParams(hue_spread=1.0))
    assert (guesses == classes).mean() < 0.35  # chance is 1/6


def test_statistics_hand_worked() -> None:
    # Two instances of class 0 parted by a 1-px void band (touching), one of class 1 apart.
    objects = np.zeros((6, 10), dtype=np.uint8)
    objects[1:4, 0:3] = 1
    objects[1:4, 3] = 255
    objects[1:4, 4:6] = 2
    objects[1:3, 8:10] = 3
    classes = np.select([objects == 255, np.isin(objects, [1, 2]), objects == 3], [255, 1, 2])
    classes = classes.astype(np.uint8)
    empty = np.zeros_like(objects)
    stats = dataset_statistics([classes, empty], [objects, empty], void_width=1)
    assert stats["images"] == 2 and stats["instances"] == 3
    assert stats["instances_per_image_mean"] == 1.5
    assert (stats["instances_per_image_min"], stats["instances_per_image_max"]) == (0, 3)
    assert stats["classes_per_image_mean"] == 1.0
    assert stats["touching_same_class_share"] == 0.5
    assert stats["instance_area_p50"] == 6.0
    assert stats["void_share"] == 3 / 120

    # A 2-px gap is more than a 1-px band: not touching; with a 2-px band it is.
    wide = objects.copy()
    wide[1:4, 4] = 255
    wide_classes = np.where(wide == 255, 255, classes).astype(np.uint8)
    assert dataset_statistics([wide_classes], [wide], void_width=1)["touching_same_class_share"] == 0.0
    assert dataset_statistics([wide_classes], [wide], void_width=2)["touching_same_class_share"] == 1.0
    # Touching instances of different classes do not count.
    mixed = np.where(objects == 2, 3, classes).astype(np.uint8)
    assert dataset_statistics([mixed], [objects], void_width=1)["touching_same_class_share"] == 0.0


def test_statistics_from_root_are_numbers(root: Path) -> None:
    stats = statistics_from_root(root, void_width=SMALL.void_width)
    assert stats["images"] == 12
    for key in ("instances_per_image_mean", "touching_same_class_share", "instance_area_p5", "void_share"):
        assert key in stats
    assert all(type(value) is float and np.isfinite(value) for value in stats.values())
    assert statistics_from_root(root, ["val_000000"])["images"] == 1


def test_statistics_bad_input() -> None:
    with pytest.raises(ValueError):
        dataset_statistics([], [])
    with pytest.raises(ValueError):
        dataset_statistics([np.zeros((4, 4), np.uint8)], [])
    with pytest.raises(ValueError):
        dataset_statistics([np.zeros((4, 4), np.uint8)], [np.zeros((4, 5), np.uint8)])


# The embedded style's output as the generator wrote it before styles existed: sha256 of the
# SMALL dataset's files (name and bytes, in sorted order) and of three default-params images.
EMBEDDED_TREE_SHA256 = "d53aa3e99b57485a0d1e4c3f33a9c311018534127ccb50e5a290f4eb4946046f"
EMBEDDED_IMAGE_SHA256 = {
    ("train", 0): "f7616606026b8933e885adae819b6601d7e25687ecd9faaaf3693172b18a9eab",
    ("train", 7): "5d06325f572fc9a52a1091067d3efc2d9ae1c7bc0696eba2605eb613cdfc8ab6",
    ("val", 3): "54ad817fbaa7453ede00e384aed0dfb449412c24cc7453e6ab5ca443c851d3c6",
}


def test_embedded_style_is_byte_identical_to_the_pre_style_generator(tmp_path: Path) -> None:
    assert SynthesizeParams().style == "embedded"
    generate(tmp_path, SMALL)
    tree = hashlib.sha256()
    for name, data in _tree_bytes(tmp_path).items():
        tree.update(name.encode())
        tree.update(data)
    assert tree.hexdigest() == EMBEDDED_TREE_SHA256
    for (split, index), expected in EMBEDDED_IMAGE_SHA256.items():
        sample = render_image(SynthesizeParams(), split, index)
        digest = hashlib.sha256()
        for array in (sample.image, sample.class_map, sample.object_map):
            digest.update(array.tobytes())
        digest.update(bytes(sample.classes))
        assert digest.hexdigest() == expected, (split, index)


def test_style_registry_matches_the_params_choices() -> None:
    style = next(f for f in dataclasses.fields(SynthesizeParams) if f.name == "style")
    assert tuple(style.metadata["choices"]) == tuple(STYLES)
    assert STYLES["embedded"].class_names == CLASS_NAMES
    for name, definition in STYLES.items():
        assert len(definition.class_names) == len(definition.class_shapes) == len(definition.class_textures) == 6, name


def _masks_of(style_name: str, count: int = 40) -> tuple[list[np.ndarray], list[np.ndarray]]:
    samples = [render_image(SynthesizeParams(style=style_name), "train", i) for i in range(count)]
    return [s.class_map for s in samples], [s.object_map for s in samples]


def _box_fill(class_maps: list[np.ndarray], object_maps: list[np.ndarray]) -> np.ndarray:
    """Every instance's labelled pixels over its bounding box's area: a shape-family statistic."""
    fills = []
    for objects in object_maps:
        instances = np.where(objects == 255, 0, objects)
        for k, box in enumerate(ndimage.find_objects(instances), start=1):
            if box is not None:
                fills.append((instances[box] == k).mean())
    return np.asarray(fills)


def test_heldout_style_differs_in_shapes_sizes_and_looks() -> None:
    embedded, heldout = _masks_of("embedded"), _masks_of("heldout")
    assert not set(STYLES["embedded"].class_names) & set(STYLES["heldout"].class_names)
    # Shape families: thin needles, spikes, crescents and horseshoes fill less of their box.
    fill_embedded, fill_heldout = _box_fill(*embedded), _box_fill(*heldout)
    assert np.median(fill_heldout) < np.median(fill_embedded) - 0.05
    # Sizes: more small and more large objects, so a far wider spread of areas.
    stats_embedded, stats_heldout = dataset_statistics(*embedded), dataset_statistics(*heldout)
    spread = {
        name: stats["instance_area_p95"] / stats["instance_area_p5"]
        for name, stats in (("embedded", stats_embedded), ("heldout", stats_heldout))
    }
    assert spread["heldout"] > 2 * spread["embedded"], spread
    assert stats_heldout["instance_area_p5"] < stats_embedded["instance_area_p5"]
    assert stats_heldout["instance_area_p95"] > stats_embedded["instance_area_p95"]
    # Same params, other style: other pixels.
    first = (render_image(SynthesizeParams(style=name), "train", 0).image for name in ("embedded", "heldout"))
    a, b = first
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_heldout_looks_style_has_heldout_looks_and_embedded_sizes() -> None:
    embedded, looks = _masks_of("embedded"), _masks_of("heldout_looks")
    assert STYLES["heldout_looks"].class_names == STYLES["heldout"].class_names
    assert np.median(_box_fill(*looks)) < np.median(_box_fill(*embedded)) - 0.05
    # The embedded geometry: areas within a third of the embedded quantiles (the held-out
    # style's p5 is several times smaller), and as many instances survive occlusion.
    stats_embedded, stats_looks = dataset_statistics(*embedded), dataset_statistics(*looks)
    for quantile in ("instance_area_p5", "instance_area_p50", "instance_area_p95"):
        assert 0.67 < stats_looks[quantile] / stats_embedded[quantile] < 1.5, (quantile, stats_looks, stats_embedded)
