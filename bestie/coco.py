"""Instance masks <-> COCO JSON (RLE), both ways, with pycocotools doing the run-length work.

Every RLE this module writes is *compressed* with ``counts`` as a ``str``, so it is JSON
serialisable as is; every reader accepts str or bytes counts, uncompressed RLE (list counts)
and polygons. Class indices are 0-based; a file's ``category_id`` of class c is
``category_ids[c]``, the dataset's own ids in ascending order (class + 1 when none are given,
as for VOC), so files written for a COCO dataset score against its own annotation files.

The loaders validate what the evaluators and pycocotools rely on, so a malformed file fails
with one ``BestieError`` naming the file and the entry instead of a KeyError deep inside
pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from numbers import Real
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bestie.structures import GroundTruth
from bestie.errors import BestieError
from bestie.io import atomic_file, read_json

__all__ = [
    "encode_masks",
    "rle_areas",
    "decode_segmentation",
    "annotation_masks",
    "ground_truth_by_image",
    "segmentation_to_rle",
    "masks_to_annotations",
    "masks_to_results",
    "coco_categories",
    "build_coco",
    "CocoWriter",
    "load_coco_gt",
    "load_results",
]

_RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")
_INFO = {"description": "bestie instance annotations"}


# --------------------------------------------------------------------------- encoding


def _str_counts(rle: dict) -> dict:
    """Compressed RLE with bytes or str counts -> the same with str counts (JSON-ready)."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Masks bool [N, H, W] -> N compressed RLEs ``{"size": [H, W], "counts": str}``."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    # pycocotools wants a Fortran-ordered uint8 [H, W, N] array.
    stacked = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    return [_str_counts(rle) for rle in mask_utils.encode(stacked)]


def rle_areas(rles: list[dict]) -> np.ndarray:
    """Pixel counts int64 [N] of N compressed RLEs."""
    # pycocotools.mask.area overflows on more than 255 RLEs under numpy 2 (it sizes its
    # output through a uint8 array), so feed it chunks.
    chunks = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- decoding


def _is_size(size: Any) -> bool:
    return (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size)
    )


def _to_rle(segmentation: Any, height: int | None, width: int | None) -> dict:
    """Any COCO segmentation -> compressed RLE with str counts; ValueError if malformed.

    ``height``/``width`` are needed for polygons and, when given, must match an RLE's size.
    """
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not _is_size(size):
            raise ValueError("RLE needs 'size': [height, width]")
        if height is not None and list(size) != [height, width]:
            raise ValueError(f"RLE size {list(size)} != image size {[height, width]}")
        if isinstance(counts, (str, bytes)):
            return _str_counts(segmentation)
        if isinstance(counts, list):  # uncompressed RLE
            if not all(isinstance(c, int) and c >= 0 for c in counts):
                raise ValueError("uncompressed RLE counts must be non-negative ints")
            if sum(counts) != size[0] * size[1]:
                raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, not H*W")
            return _str_counts(mask_utils.frPyObjects({"size": list(size), "counts": counts}, *size))
        raise ValueError("RLE needs 'counts' as str, bytes or a list of ints")
    if isinstance(segmentation, list):
        if height is None or width is None:
            raise ValueError("polygons need the image height and width")
        if not segmentation:
            raise ValueError("empty polygon list")
        for polygon in segmentation:
            # pycocotools reads a 4-number list as a box, so demand >= 3 points.
            is_flat = isinstance(polygon, list) and all(isinstance(v, Real) for v in polygon)
            if not is_flat or len(polygon) < 6 or len(polygon) % 2:
                raise ValueError("each polygon must be a flat list [x1, y1, x2, y2, ...] of >= 3 points")
        polygons = [[float(v) for v in polygon] for polygon in segmentation]
        return _str_counts(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
    raise ValueError(f"expected an RLE dict or a list of polygons, got {type(segmentation).__name__}")


def segmentation_to_rle(segmentation: Any, height: int | None = None, width: int | None = None) -> dict:
    """Any COCO segmentation (RLE, uncompressed RLE, polygons) -> compressed RLE, str counts."""
    try:
        return _to_rle(segmentation, height, width)
    except ValueError as err:
        raise BestieError(f"segmentation: {err}") from None


def decode_segmentation(segmentation: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Any COCO segmentation -> mask bool [H, W]; polygons need ``height`` and ``width``."""
    rle = segmentation_to_rle(segmentation, height, width)
    rle["counts"] = rle["counts"].encode("ascii")
    with warnings.catch_warnings():
        # pycocotools' Cython decode trips numpy 2's __array__(copy=...) deprecation; harmless.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def annotation_masks(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    """The masks of one image's COCO annotations (any segmentation form), bool [N, H, W]."""
    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for i, annotation in enumerate(annotations):
        masks[i] = decode_segmentation(annotation["segmentation"], height, width)
    return masks


class _GroundTruthByImage(Mapping):
    """Image id -> :class:`GroundTruth`, decoded when asked for: a split's masks never all at once."""

    def __init__(self, coco: dict) -> None:
        self._images = {image["id"]: image for image in coco["images"]}
        self._annotations: dict[int, list[dict]] = {image_id: [] for image_id in self._images}
        for annotation in coco["annotations"]:
            if not annotation.get("iscrowd", 0):
                self._annotations[annotation["image_id"]].append(annotation)
        category_ids = sorted(category["id"] for category in coco["categories"])
        self._class_of = {category_id: c for c, category_id in enumerate(category_ids)}

    def __getitem__(self, image_id: int) -> GroundTruth:
        image, annotations = self._images[image_id], self._annotations[image_id]
        return GroundTruth(
            masks=annotation_masks(annotations, image["height"], image["width"]),
            classes=np.array([self._class_of[a["category_id"]] for a in annotations], dtype=np.int64),
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)


def ground_truth_by_image(coco: dict) -> Mapping[int, GroundTruth]:
    """A COCO instances dict -> image id -> its instances (masks [N, H, W], 0-based classes [N]).

    Every image of ``coco["images"]`` is a key, with its non-crowd annotations in file order;
    class c is the c-th smallest category id. Masks are decoded on access, one image at a time.
    """
    return _GroundTruthByImage(coco)


# --------------------------------------------------------------------------- writing


def _instance_arrays(
    masks: np.ndarray, classes: np.ndarray, scores: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    masks = np.asarray(masks, dtype=bool)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if len(classes) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(classes)} classes")
    if (classes < 0).any():
        raise ValueError("classes must be 0-based indices >= 0")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(masks):
            raise ValueError(f"{len(masks)} masks but {len(scores)} scores")
    return masks, classes, scores


def masks_to_annotations(
    masks: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray | None,
    image_id: int,
    start_id: int = 1,
    category_ids: Sequence[int] | None = None,
    iscrowd: int = 0,
) -> list[dict]:
    """Instances of one image -> COCO annotations (empty masks are skipped).

    Args:
        masks: bool [N, H, W]. classes: int [N], 0-based. scores: float [N] or None.
        start_id: ``id`` of the first kept annotation; ids are consecutive.
        category_ids: class index -> ``category_id``; None: class + 1.
        iscrowd: 1 for crowd regions (pycocotools ignores what matches them).
    Returns:
        dicts with ``id``, ``image_id``, ``category_id``, ``segmentation``
        (RLE, str counts), ``area`` (int), ``bbox`` [x, y, w, h], ``iscrowd``, and
        ``score`` when scores are given.
    """
    masks, classes, scores = _instance_arrays(masks, classes, scores)
    keep = np.flatnonzero(masks.any(axis=(1, 2)))
    rles = encode_masks(masks[keep]) if len(keep) else []
    areas = rle_areas(rles)
    boxes = mask_utils.toBbox(rles) if rles else []
    annotations = []
    for k, (i, rle) in enumerate(zip(keep, rles)):
        annotation = {
            "id": int(start_id + k),
            "image_id": int(image_id),
            "category_id": int(classes[i]) + 1 if category_ids is None else int(category_ids[classes[i]]),
            "segmentation": rle,
            "area": int(areas[k]),
            "bbox": [float(v) for v in boxes[k]],
            "iscrowd": iscrowd,
        }
        if scores is not None:
            annotation["score"] = float(scores[i])
        annotations.append(annotation)
    return annotations


def masks_to_results(
    masks: np.ndarray, classes: np.ndarray, scores: np.ndarray, image_id: int,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """Instances of one image -> COCO *result* entries (empty masks are skipped).

    Entries hold ``image_id``, ``category_id`` (``category_ids[class]``; None: class + 1),
    ``segmentation`` (RLE, str counts) and ``score``. No ``bbox``: pycocotools' loadRes would
    then take the box area as the mask area.
    """
    if scores is None:
        raise ValueError("results need scores")
    return [
        {key: annotation[key] for key in _RESULT_KEYS}
        for annotation in masks_to_annotations(masks, classes, scores, image_id, category_ids=category_ids)
    ]


def coco_categories(class_names: Sequence[str], category_ids: Sequence[int] | None = None) -> list[dict]:
    """Class names (index = class) -> COCO categories with ``id`` = ``category_ids[class]``
    (None: class + 1)."""
    ids = range(1, len(class_names) + 1) if category_ids is None else category_ids
    if len(ids) != len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(ids)} category ids")
    return [{"id": int(i), "name": name, "supercategory": "object"} for i, name in zip(ids, class_names)]


def build_coco(
    images: list[dict], annotations: list[dict], class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> dict:
    """A complete COCO instances dict; ``images`` carry ``id``, ``file_name``, ``height``, ``width``."""
    return {
        "info": dict(_INFO),
        "images": list(images),
        "annotations": list(annotations),
        "categories": coco_categories(class_names, category_ids),
    }


class CocoWriter:
    """Writes a COCO instances file image by image, holding no annotation in memory.

    Annotations go to an anonymous temporary file as they come; closing writes the file at
    ``path`` atomically, byte for byte what ``write_json(path, build_coco(...), indent=None)``
    writes. Used as a context manager, nothing reaches ``path`` when the block raises.
    """

    def __init__(self, path: str | os.PathLike, class_names: Sequence[str],
                 category_ids: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self.categories = coco_categories(class_names, category_ids)
        self.images: list[dict] = []
        self.num_annotations = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._annotations = tempfile.TemporaryFile("w+", dir=self.path.parent)  # never a result

    def add(self, image: dict, annotations: list[dict]) -> None:
        """One image entry and its annotations (ids already assigned)."""
        self.images.append(image)
        for annotation in annotations:
            self._annotations.write(", " if self.num_annotations else "")
            json.dump(annotation, self._annotations)
            self.num_annotations += 1

    def __enter__(self) -> CocoWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._annotations.seek(0)
                with atomic_file(self.path) as out:
                    out.write(f'{{"info": {json.dumps(_INFO)}, "images": {json.dumps(self.images)}, "annotations": [')
                    shutil.copyfileobj(self._annotations, out)
                    out.write(f'], "categories": {json.dumps(self.categories)}}}\n')
        finally:
            self._annotations.close()


# --------------------------------------------------------------------------- loading


def _quiet(function, *args):
    """Call a chatty pycocotools function with its prints swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def _check_fields(where: str, entry: Any, required: Sequence[str]) -> None:
    """Raise :class:`BestieError` naming ``where`` unless ``entry`` is an object with every ``required`` key."""
    if not isinstance(entry, dict):
        raise BestieError(f"{where} is not an object")
    missing = [name for name in required if name not in entry]
    if missing:
        raise BestieError(f"{where} has no {', '.join(repr(m) for m in missing)}")


def _check_entries(source: str, dataset: dict, key: str, required: tuple[str, ...]) -> list[dict]:
    entries = dataset.get(key)
    if not isinstance(entries, list):
        raise BestieError(f"{source}: '{key}' must be a list")
    for i, entry in enumerate(entries):
        _check_fields(f"{source}: {key}[{i}]", entry, required)
    ids = [entry["id"] for entry in entries]
    if len(set(ids)) != len(ids):
        raise BestieError(f"{source}: '{key}' has duplicate ids")
    return entries


def _validate_gt(source: str, dataset: Any) -> None:
    if not isinstance(dataset, dict):
        raise BestieError(f"{source}: expected a COCO instances object")
    images = _check_entries(source, dataset, "images", ("id", "height", "width"))
    categories = _check_entries(source, dataset, "categories", ("id", "name"))
    annotations = _check_entries(
        source, dataset, "annotations", ("id", "image_id", "category_id", "segmentation", "area", "iscrowd")
    )
    sizes = {image["id"]: (image["height"], image["width"]) for image in images}
    category_ids = {category["id"] for category in categories}
    for i, annotation in enumerate(annotations):
        if annotation["image_id"] not in sizes:
            raise BestieError(f"{source}: annotations[{i}] has unknown image_id {annotation['image_id']!r}")
        if annotation["category_id"] not in category_ids:
            raise BestieError(
                f"{source}: annotations[{i}] has unknown category_id {annotation['category_id']!r}"
            )
        try:
            _to_rle(annotation["segmentation"], *sizes[annotation["image_id"]])
        except ValueError as err:
            raise BestieError(f"{source}: annotations[{i}].segmentation: {err}") from None


def load_coco_gt(gt: str | os.PathLike | dict | COCO) -> COCO:
    """A COCO instances file, dict or COCO object -> validated pycocotools ``COCO`` (silently).

    Images need ``id``, ``height``, ``width``; categories ``id``, ``name``; annotations
    ``id``, ``image_id``, ``category_id``, ``segmentation``, ``area``, ``iscrowd`` (COCOeval
    reads the last two), with known image and category ids and masks of the image's size.
    """
    if isinstance(gt, COCO):
        _validate_gt("ground truth", gt.dataset)
        return gt
    source = "ground truth" if isinstance(gt, dict) else str(gt)
    dataset = gt if isinstance(gt, dict) else read_json(gt)
    _validate_gt(source, dataset)
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def _is_score(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def load_results(results: str | os.PathLike | list[dict], gt: COCO) -> list[dict]:
    """COCO result entries (file or list) -> validated copies with RLE (str counts) masks.

    Each entry needs ``image_id`` (an image of ``gt``), ``category_id`` (a category of
    ``gt``), ``segmentation`` (RLE or polygons, of the image's size) and a finite ``score``.
    The input is not modified; an empty list is valid.
    """
    source = "results" if isinstance(results, list) else str(results)
    entries = results if isinstance(results, list) else read_json(results)
    if not isinstance(entries, list):
        raise BestieError(f"{source}: expected a list of COCO result entries")
    checked = []
    for i, entry in enumerate(entries):
        _check_fields(f"{source}: [{i}]", entry, _RESULT_KEYS)
        image = gt.imgs.get(entry["image_id"])
        if image is None:
            raise BestieError(f"{source}: [{i}] has image_id {entry['image_id']!r}, not in the ground truth")
        if entry["category_id"] not in gt.cats:
            raise BestieError(
                f"{source}: [{i}] has category_id {entry['category_id']!r}, not in the ground truth"
            )
        if not _is_score(entry["score"]):
            raise BestieError(f"{source}: [{i}] score must be a finite number, got {entry['score']!r}")
        try:
            rle = _to_rle(entry["segmentation"], image["height"], image["width"])
        except ValueError as err:
            raise BestieError(f"{source}: [{i}].segmentation: {err}") from None
        checked.append({**entry, "segmentation": rle, "score": float(entry["score"])})
    return checked
