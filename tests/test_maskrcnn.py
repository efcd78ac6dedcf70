"""Mask R-CNN refinement: the COCO data path, both backbones, training, resume, inference."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from functools import partial
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools.coco import COCO
from torchvision.models import WeightsEnum

from bestie.checkpoint import load_checkpoint, load_weights, save_checkpoint
from bestie.coco import build_coco, masks_to_annotations
from bestie.config import MaskRCNNParams
from bestie.data.coco_dataset import CocoInstances, collate_detection, masks_to_boxes, to_tensor
from bestie.distributed import DistContext
from bestie.errors import BestieError
from bestie.maskrcnn import MaskRCNNLosses, build_maskrcnn, predict_maskrcnn
from bestie.structures import Instances
from bestie.training import LoopSettings, TrainState, build_optimizer, iteration_batches, poly_lr, train

CLASSES = ("disc", "box")
TINY = MaskRCNNParams(
    min_size=[48], max_size=64, anchor_size=8, iterations=4, batch_size=2, warmup_iters=1,
    checkpoint_every=2, log_every=1, detections_per_image=5,
)


def _scene(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 40 x 48 image with two bright squares (classes 0, 1): image uint8, masks [2, 40, 48], classes."""
    masks = np.zeros((2, 40, 48), dtype=bool)
    masks[0, 4 + index : 16 + index, 5:17] = True
    masks[1, 20:34, 25 + index : 41 + index] = True
    image = np.full((40, 48, 3), 40, dtype=np.uint8)
    image[masks[0]] = (220, 60, 60)
    image[masks[1]] = (60, 220, 60)
    return image, masks, np.array([0, 1])


def _write_coco(root: Path, count: int = 2) -> Path:
    """JPEGs + a pseudo-label file written the way the export_coco stage writes it."""
    (root / "JPEGImages").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        image, masks, classes = _scene(i)
        Image.fromarray(image).save(root / "JPEGImages" / f"im{i}.jpg", quality=95)
        images.append({"id": i + 1, "file_name": f"im{i}.jpg", "width": 48, "height": 40})
        annotations += masks_to_annotations(masks, classes, np.array([0.9, 0.6]), i + 1, len(annotations) + 1)
    path = root / "train_pseudo.json"
    path.write_text(json.dumps(build_coco(images, annotations, CLASSES)))
    return path


class _Scenes(torch.utils.data.Dataset):
    """In-memory ``(index, seed)``-keyed detection samples; flips drawn from the seed."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, key):
        index, seed = key
        image, masks, classes = _scene(index)
        if np.random.default_rng(seed).random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        masks = np.ascontiguousarray(masks)
        return to_tensor(image), {
            "boxes": torch.from_numpy(masks_to_boxes(masks)),
            "labels": torch.from_numpy(classes + 1),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
        }


def train_tiny(model, params: MaskRCNNParams = TINY, *, seed: int = 0, state: TrainState | None = None,
               save_state=None, dataset=None) -> list[dict]:
    """Mask R-CNN training on in-memory scenes, built as stages/maskrcnn.py builds it."""
    state = state or TrainState()
    context = DistContext(0, 1, torch.device("cpu"))
    return train(
        MaskRCNNLosses(model),
        iteration_batches(dataset or _Scenes(), collate_detection, params.batch_size, state.iteration,
                          params.iterations, seed, context, params.workers),
        build_optimizer(params.optimizer, model.parameters(), params.lr, params.weight_decay),
        partial(poly_lr, total=params.iterations, warmup=params.warmup_iters, power=params.poly_power),
        LoopSettings(params.iterations, params.log_every, params.checkpoint_every, seed=seed, lr_key="maskrcnn.lr",
                     name="maskrcnn"),
        context, state=state, save_state=save_state,
    )


# ------------------------------------------------------------------ the COCO data path


def _image_paths(path):
    """Image id -> image path of a file written by _write_coco (the prepared manifest's role)."""
    return {i["id"]: path.parent / "JPEGImages" / i["file_name"] for i in json.loads(path.read_text())["images"]}


def test_masks_to_boxes_are_pixel_edges():
    masks = np.zeros((2, 5, 6), dtype=bool)
    masks[0, 2, 3] = True  # one pixel at row 2, column 3
    masks[1, 1:4, 0:6] = True
    assert masks_to_boxes(masks).tolist() == [[3, 2, 4, 3], [0, 1, 6, 4]]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools under numpy 2
def test_pseudo_labels_load_in_pycocotools_and_torchvision_unchanged(tmp_path):
    path = _write_coco(tmp_path)
    coco = COCO(str(path))
    assert len(coco.getAnnIds()) == 4 and coco.loadCats([1, 2])[1]["name"] == "box"

    dataset = torchvision.datasets.CocoDetection(str(tmp_path / "JPEGImages"), str(path))
    wrapped = torchvision.datasets.wrap_dataset_for_transforms_v2(dataset, target_keys=("boxes", "labels", "masks"))
    ours = CocoInstances(path, _image_paths(path), flip=False)
    for index in range(2):
        image, target = wrapped[index]
        _, masks, classes = _scene(index)
        assert target["labels"].tolist() == (classes + 1).tolist()
        assert torch.equal(target["masks"].bool(), torch.from_numpy(masks))
        assert target["boxes"].tolist() == masks_to_boxes(masks).tolist()
        # Our training dataset reads the same file into the same targets.
        our_image, our_target = ours[index]
        assert our_image.shape == (3, 40, 48) and our_image.dtype == torch.float32
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(our_target[key], target[key].as_subclass(torch.Tensor).to(our_target[key].dtype))


def test_dataset_flips_image_masks_and_boxes_together(tmp_path):
    path = _write_coco(tmp_path)
    dataset = CocoInstances(path, _image_paths(path))
    plain_image, plain = dataset[0]
    seed = next(s for s in range(100) if np.random.default_rng(s).random() < 0.5)  # a seed that flips
    image, flipped = dataset[(0, seed)]
    assert torch.equal(image, plain_image.flip(-1))
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    x0, y0, x1, y1 = plain["boxes"].unbind(1)
    assert torch.equal(flipped["boxes"], torch.stack([48 - x1, y0, 48 - x0, y1], dim=1))


def test_dataset_skips_images_without_instances_and_warns_on_an_empty_file(tmp_path, capsys):
    path = _write_coco(tmp_path)
    coco = json.loads(path.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] == 2]
    path.write_text(json.dumps(coco))
    assert CocoInstances(path, _image_paths(path)).image_ids == [2]
    coco["annotations"] = []
    path.write_text(json.dumps(coco))
    assert CocoInstances(path, _image_paths(path)).image_ids == sorted(i["id"] for i in coco["images"])
    assert "no image has annotations" in capsys.readouterr().err
    coco["images"] = []
    path.write_text(json.dumps(coco))
    with pytest.raises(BestieError, match="no images to train on"):
        CocoInstances(path, _image_paths(path))


def test_dataset_names_a_missing_image(tmp_path):
    path = _write_coco(tmp_path)
    (tmp_path / "JPEGImages/im1.jpg").unlink()
    with pytest.raises(BestieError, match="im1.jpg: image not found"):
        CocoInstances(path, _image_paths(path))[1]


# ------------------------------------------------------------------ models


def _train_step_loss(model) -> torch.Tensor:
    images, targets = collate_detection([_Scenes()[(0, 1)], _Scenes()[(1, 2)]])
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert math.isfinite(loss.item())
    return loss


def test_small_fpn_trains_and_predicts_instances_at_image_size():
    torch.manual_seed(0)
    model = build_maskrcnn(len(CLASSES), TINY)
    assert list(model.backbone(torch.zeros(1, 3, 64, 64))) == ["0", "1", "2", "pool"]  # strides 4 .. 32
    _train_step_loss(model).backward()
    assert all(p.grad is not None for p in model.parameters())

    model.eval()
    image, _, _ = _scene(0)
    instances = predict_maskrcnn(model, image, torch.device("cpu"))
    assert isinstance(instances, Instances)
    assert instances.masks.shape[1:] == (40, 48) and instances.masks.dtype == bool
    assert len(instances.classes) == len(instances.scores) == len(instances.masks) <= TINY.detections_per_image
    assert ((instances.classes >= 0) & (instances.classes < len(CLASSES))).all()
    assert (np.diff(instances.scores) <= 0).all()


def test_resnet50_fpn_builds_offline_from_scratch():
    torch.manual_seed(0)
    model = build_maskrcnn(len(CLASSES), dataclasses.replace(TINY, backbone="resnet50_fpn"))
    # From scratch: ordinary BatchNorm and every layer trainable (frozen layers are for ImageNet weights).
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.parameters())
    assert model.roi_heads.box_predictor.cls_score.out_features == len(CLASSES) + 1
    with torch.no_grad():
        _train_step_loss(model)


def test_pretrained_resnet50_architecture_builds_without_download(monkeypatch):
    """The model of a checkpoint of an ImageNet-initialised model: torchvision's pretrained
    layout (frozen BatchNorm, 3 trainable stages), the weights to come from the checkpoint."""
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: pytest.fail("downloaded"))
    params = dataclasses.replace(TINY, backbone="resnet50_fpn", pretrained=True)
    model = build_maskrcnn(len(CLASSES), params, download=False)
    assert isinstance(model.backbone.body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad


def test_pretrained_weights_offline_is_a_clear_error(monkeypatch):
    def no_network(self, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_network)
    params = dataclasses.replace(TINY, backbone="resnet50_fpn", pretrained=True)
    with pytest.raises(BestieError, match=r"could not download the ImageNet weights of resnet50 \(.*name "
                                          r"resolution.*\): set `pretrained: false` to train from scratch"):
        build_maskrcnn(len(CLASSES), params)


def test_checkpoint_round_trip_gives_the_same_predictions(tmp_path):
    torch.manual_seed(0)
    model = build_maskrcnn(len(CLASSES), TINY)
    train_tiny(model, dataclasses.replace(TINY, iterations=2))
    path = tmp_path / "maskrcnn.pt"
    save_checkpoint(path, model.state_dict(), kind="maskrcnn", config=dataclasses.asdict(TINY), class_names=CLASSES)
    checkpoint = load_checkpoint(path, kind="maskrcnn", class_names=CLASSES)
    loaded = build_maskrcnn(len(CLASSES), MaskRCNNParams(**checkpoint["config"]), download=False)
    load_weights(loaded, checkpoint["model"], source=path)
    image = _scene(1)[0]
    expected = predict_maskrcnn(model.eval(), image, torch.device("cpu"))
    got = predict_maskrcnn(loaded.eval(), image, torch.device("cpu"))
    assert np.array_equal(got.masks, expected.masks) and np.array_equal(got.scores, expected.scores)


# ------------------------------------------------------------------ training loop


def test_resumed_run_replays_the_uninterrupted_run_exactly():
    """4 iterations straight == 2 iterations, a state checkpoint, then 2 more from it."""
    saved: dict[int, tuple[dict, TrainState]] = {}

    def save_state(state):
        saved[state.iteration] = (copy.deepcopy(straight.state_dict()), copy.deepcopy(state))

    torch.manual_seed(0)
    straight = build_maskrcnn(len(CLASSES), TINY)
    history = train_tiny(straight, seed=5, save_state=save_state)
    assert sorted(saved) == [2, 4] and [row["step"] for row in history] == [1, 2, 3, 4]
    assert set(history[0]) == {"step", "loss", "classifier", "box_reg", "mask", "objectness", "rpn_box_reg",
                               "lr", "seconds"}

    weights, state = saved[2]
    torch.manual_seed(123)  # a different global state must not matter
    resumed = build_maskrcnn(len(CLASSES), TINY)
    resumed.load_state_dict(weights)
    train_tiny(resumed, seed=5, state=state)
    final = straight.state_dict()
    for name, tensor in resumed.state_dict().items():
        assert torch.equal(tensor, final[name]), name


def test_a_diverging_loss_is_one_line_naming_the_lr():
    torch.manual_seed(0)
    model = build_maskrcnn(len(CLASSES), TINY)
    with pytest.raises(BestieError, match=r"^maskrcnn\.lr: the loss diverged \(nan\) at iteration 0; lower it$"):
        train_tiny(model, dataclasses.replace(TINY, iterations=1), dataset=_NaNScenes())


class _NaNScenes(_Scenes):
    def __getitem__(self, key):
        image, target = super().__getitem__(key)
        return torch.full_like(image, float("nan")), target
