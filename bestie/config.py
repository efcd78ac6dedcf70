"""Typed, validated params.

``params.yaml`` is parsed once, checked completely (unknown keys, types, ranges, choices)
and turned into frozen dataclasses that library code receives as explicit arguments.
Every stage loads the whole file, so one bad value stops ``dvc repro`` at its first stage
with a one-line message naming the key.

A field's limits live in its metadata (:mod:`bestie.schema`: ``min``, ``max``, ``choices``,
``parity``, ``nonempty``); what relates two fields is checked in the dataclass's ``__post_init__``. A model's choices are its registry's names
(:data:`~bestie.models.backbones.BACKBONES`), so a new backbone is valid as soon as it is
registered.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bestie.errors import BestieError
from bestie.models.backbones import BACKBONES
from bestie.schema import build, check_value, field_with_limits as _f, read_yaml_file

__all__ = ["Params", "load_params", "read_params_file", "parse_params", "parse_section", "SUPERVISIONS", "DATA_FORMATS"]

SUPERVISIONS = ("cls", "point", "full")
INPUT_SOURCES = ("compute", "read")  # a stage's output computed, or read from precomputed files
DATA_FORMATS = ("voc", "coco")
MAX_SEED = 2**32 - 1  # the usual seed range (torch.manual_seed fails beyond 64 bits)


@dataclass(frozen=True)
class CocoFilesParams:
    """Where a COCO-format root keeps its files (``data.format: coco``), relative to ``data.root``.

    The defaults are the COCO 2017 layout. A points file is optional (format: README
    "Datasets"); without one, each instance gets one interior point.
    """

    train_annotations: str = _f("annotations/instances_train2017.json", nonempty=True)
    val_annotations: str = _f("annotations/instances_val2017.json", nonempty=True)
    train_images: str = _f("train2017", nonempty=True)
    val_images: str = _f("val2017", nonempty=True)
    train_points: str | None = _f(None)
    val_points: str | None = _f(None)


@dataclass(frozen=True)
class DataParams:
    """The input dataset; ``prepare`` is the only stage that reads its format."""

    # bestie.data.sources.SOURCES (a test keeps the two equal; config imports no reader)
    format: str = _f("voc", choices=DATA_FORMATS)
    root: str = _f("data/synthetic", nonempty=True)
    train_split: str = _f("train", nonempty=True)  # voc: ImageSets/Segmentation/<name>.txt, e.g. train_aug
    val_split: str = _f("val", nonempty=True)
    coco: CocoFilesParams = field(default_factory=CocoFilesParams)


@dataclass(frozen=True)
class SynthesizeParams:
    """The embedded synthetic VOC2012-format dataset."""

    # bestie.data.synthetic.STYLES (it imports this module; a test keeps the two equal).
    # heldout: other shapes, textures, sizes, clutter; heldout_looks: its looks at the embedded
    # sizes and occlusion; never tune defaults on either
    style: str = _f("embedded", choices=("embedded", "heldout", "heldout_looks"))
    num_train: int = _f(400, min=1)
    num_val: int = _f(100, min=1)
    num_classes: int = _f(6, min=1, max=6)
    min_side: int = _f(96, min=48)
    max_side: int = _f(160, min=48)
    max_instances: int = _f(6, min=1, max=12)
    max_classes_per_image: int = _f(3, min=1, max=6)
    touching_share: float = _f(0.4, min=0.0, max=1.0)  # images forced to hold a touching same-class pair
    distractors: int = _f(3, min=0, max=20)  # max class-free clutter shapes per image
    hue_spread: float = _f(0.25, min=0.0, max=1.0)  # width of a class's hue family (1: any hue)
    void_width: int = _f(1, min=0, max=5)  # px of 255 band on instance borders
    seed: int = _f(0, min=0, max=MAX_SEED)
    coco: bool = _f(False)  # also write the COCO 2017 layout of the same data (for data.format: coco)


@dataclass(frozen=True)
class ClassifierParams:
    """The PAM multi-label classifier whose class maps give the peak points (docs/method.md §1)."""

    backbone: str = _f("small", choices=tuple(BACKBONES))  # vgg16: the published layout
    width: int = _f(16, min=8, parity="even")  # small backbone only: channels of its first stage
    pretrained: bool = _f(False)  # ImageNet weights through torchvision or timm (needs internet)
    # PAM threshold; 0 gives a plain CAM classifier. The published 0.7 suits ImageNet-initialised
    # VGG-16; from scratch, PAM's sparse gradients halve "one peak per instance" (README).
    alpha: float = _f(0.0, min=0.0, max=1.0)
    epochs: int = _f(40, min=1)
    lr_steps: list[int] = _f([32, 37], min=1)  # epochs at which the lr is divided by 10
    batch_size: int = _f(16, min=1)
    optimizer: str = _f("adam", choices=("adam", "sgd"))  # sgd: momentum 0.9
    lr: float = _f(1e-3, min=0.0)
    weight_decay: float = _f(1e-4, min=0.0)
    crop_size: int = _f(128, min=16)
    scale_min: float = _f(0.7, min=0.1)
    scale_max: float = _f(1.3, min=0.1)
    workers: int = _f(0, min=0)  # loader processes; 0 is fastest on a small CPU machine

    def __post_init__(self) -> None:
        steps = self.lr_steps
        if any(a >= b for a, b in zip(steps, steps[1:])):
            raise BestieError(f"params: classifier.lr_steps must be strictly increasing, got {steps}")
        if steps and steps[-1] > self.epochs:
            raise BestieError(
                f"params: classifier.lr_steps ({steps}) must not exceed classifier.epochs ({self.epochs})"
            )


@dataclass(frozen=True)
class PeaksParams:
    """Peak extraction from the classifier's class maps (docs/method.md §1)."""

    flip: bool = _f(True)
    smooth_kernel: int = _f(3, min=1, parity="odd")
    nms_kernel: int = _f(15, min=1, parity="odd")
    max_per_class: int = _f(25, min=1)
    score_thresh: float = _f(0.1, min=0.0, max=1.0)
    pseudo_thresh: float = _f(0.3, min=0.0, max=1.0)  # only peaks above it are used downstream (published 0.7)
    batch_size: int = _f(16, min=1)  # images of different sizes are padded to the largest
    # compute: from the classifier (cls) or the given points (point, full); read: ID.txt files
    source: str = _f("compute", choices=INPUT_SOURCES)
    points_dir: str = _f("Peak_points", nonempty=True)  # source read: absolute, or under data.root


@dataclass(frozen=True)
class WSSSParams:
    """Semantic pseudo labels: the classifier's CAMs, refined to follow image edges (docs/method.md §2)."""

    alpha: float = _f(0.0, min=0.0, max=1.0)  # PAM threshold applied to the CAMs (0: plain CAM)
    scales: list[float] = _f([1.0, 0.75, 1.25], min=0.1, nonempty=True)
    flip: bool = _f(True)
    bg_threshold: float = _f(0.2, min=0.0, max=1.0)  # background score; CAMs peak at 1
    # fixed: a class beats the background above bg_threshold; otsu: above its map's own Otsu threshold
    background: str = _f("fixed", choices=("fixed", "otsu"))
    refine: str = _f("pamr", choices=("pamr", "crf"))  # pixel-adaptive refinement | local dense CRF
    texture_window: int = _f(5, choices=(1, 3, 5, 7, 9))  # guide: colour + local mean, std (1: colour)
    refine_stride: int = _f(2, choices=(1, 2, 4))  # refine on a grid this many times coarser
    dilations: list[int] = _f([1, 2, 4, 8, 12, 16], min=1, nonempty=True)  # refinement neighbourhoods, coarse px
    iterations: int = _f(30, min=0)
    min_confidence: float = _f(0.5, min=0.0, max=1.0)  # less confident pixels become 255 (ignore)
    gallery: int = _f(6, min=0)  # training images drawn in the gallery
    source: str = _f("compute", choices=INPUT_SOURCES)  # read: any WSSS method's maps, ID.png
    maps_dir: str = _f("WSSS_maps", nonempty=True)  # source read: absolute, or under data.root
    # The seed's second step: a segmentation network trained on these maps predicts the maps
    # used downstream (the wsss_network section). false: the maps pass through unchanged.
    network: bool = _f(False)


@dataclass(frozen=True)
class PseudoLabelParams:
    """Semantic knowledge transfer (docs/method.md §3)."""

    min_size: int = _f(50, min=1)
    connectivity: int = _f(8, choices=(4, 8))


@dataclass(frozen=True)
class LoopCadenceParams:
    """How often an iteration-trained model logs and saves its resumable state (train, maskrcnn)."""

    checkpoint_every: int = _f(500, min=1)
    log_every: int = _f(20, min=1)
    resume: bool = _f(True)  # continue an interrupted run from its last state checkpoint


@dataclass(frozen=True)
class WSSSNetworkParams(LoopCadenceParams):
    """The segmentation network (DeepLab-style) trained on the wsss maps, when ``wsss.network`` is on."""

    # segmentation: its predictions are the maps; affinity: the maps walked over its learnt
    # pixel affinities (AffinityNet; bestie.affinity)
    method: str = _f("segmentation", choices=("segmentation", "affinity"))
    backbone: str = _f("small", choices=tuple(BACKBONES))
    pretrained: bool = _f(False)  # ImageNet weights through torchvision (needs internet)
    iterations: int = _f(1000, min=1)
    batch_size: int = _f(8, min=1)
    crop_size: int = _f(128, min=16)
    scale_min: float = _f(0.7, min=0.1)
    scale_max: float = _f(1.3, min=0.1)
    optimizer: str = _f("adam", choices=("adam", "adamw", "sgd"))  # sgd: momentum 0.9
    lr: float = _f(1e-3, min=0.0)
    weight_decay: float = _f(1e-4, min=0.0)
    warmup_iters: int = _f(50, min=0)
    poly_power: float = _f(0.9, min=0.0)
    bn_momentum: float = _f(0.01, min=0.0, max=1.0)
    hard_pixel_ratio: float = _f(1.0, min=0.0, max=1.0)  # share of the hardest pixels the loss keeps (1: all)
    embedding_dim: int = _f(64, min=1)  # affinity: channels of the per-pixel embedding
    affinity_radius: int = _f(5, min=2)  # affinity: pairs closer than this, in embedding-grid pixels
    walk_beta: float = _f(8.0, min=0.0)  # affinity: transitions weigh a ** beta
    walk_steps: int = _f(256, min=0)  # affinity: random-walk steps
    flip: bool = _f(True)  # predict: average the image's and its mirror image's probabilities
    min_confidence: float = _f(0.0, min=0.0, max=1.0)  # predict: less confident pixels become 255
    amp: bool = _f(True)  # only takes effect on CUDA
    workers: int = _f(0, min=0)


@dataclass(frozen=True)
class SegRefineParams:
    """The predicted class probabilities snapped to image edges before grouping.

    The ``wsss`` stage's pixel-adaptive refinement (:func:`bestie.edge_refine.pamr`), run on the
    network's softmax instead of on CAMs: fewer iterations, since the maps are already sharp.
    """

    iterations: int = _f(10, min=0)  # 0: off
    texture_window: int = _f(5, choices=(1, 3, 5, 7, 9))  # guide: colour + local mean, std (1: colour)
    stride: int = _f(2, choices=(1, 2, 4))  # refine on a grid this many times coarser
    dilations: list[int] = _f([1, 2, 4, 8, 12, 16], min=1, nonempty=True)  # neighbourhoods, in coarse px


@dataclass(frozen=True)
class PairwiseParams:
    """A boundary-aware segmentation loss (bestie.losses.pairwise_affinity_loss; not in the paper):
    a pixel's label should agree with the neighbours it looks like, weighted by the ``wsss``
    stage's PAMR affinity on the training image."""

    weight: float = _f(0.0, min=0.0)  # 0: off
    texture_window: int = _f(5, choices=(1, 3, 5, 7, 9))  # guide: colour + local mean, std (1: colour)
    # on a grid this many times coarser (2 lost the thin classes on heldout_looks: README)
    stride: int = _f(1, choices=(1, 2, 4))
    dilations: list[int] = _f([1, 2], min=1, nonempty=True)  # neighbourhoods, in grid pixels
    # the pixels whose pairs count: every pixel, or those the WSSS target leaves unsure (255)
    pixels: str = _f("all", choices=("all", "unsure"))


@dataclass(frozen=True)
class TrainParams(LoopCadenceParams):
    """The BESTIE network and its training with self-refinement (docs/method.md §4-§6)."""

    backbone: str = _f("small", choices=tuple(BACKBONES))
    pretrained: bool = _f(False)
    iterations: int = _f(1800, min=1)
    batch_size: int = _f(8, min=1)  # global batch, split over processes
    crop_size: int = _f(128, min=16)
    scale_min: float = _f(0.7, min=0.1)
    scale_max: float = _f(1.3, min=0.1)
    lr: float = _f(1e-3, min=0.0)
    warmup_iters: int = _f(100, min=0)
    poly_power: float = _f(0.9, min=0.0)
    weight_decay: float = _f(0.0, min=0.0)
    bn_momentum: float = _f(0.01, min=0.0, max=1.0)
    sigma: float = _f(6.0, min=0.5)
    seg_weight: float = _f(1.0, min=0.0)
    center_weight: float = _f(200.0, min=0.0)
    offset_weight: float = _f(0.01, min=0.0)
    hard_pixel_ratio: float = _f(0.2, min=0.0, max=1.0)
    # From late_hard_pixel_iter on, the segmentation loss keeps this share instead (None: off). Not in
    # the paper: hard mining learns every class early; a wider share dilutes the WSSS maps' wrong labels late.
    late_hard_pixel_ratio: float | None = _f(None, min=0.0, max=1.0)
    late_hard_pixel_iter: int = _f(900, min=0)
    # the center loss counts wherever the heatmap is known: every pixel for point/full, accepted
    # instances and background for cls; false: accepted instances only (docs/method.md §3)
    dense_center_loss: bool = _f(True)
    refine: bool = _f(True)
    refine_iter: int = _f(0, min=0)
    refine_thresh: float = _f(0.3, min=0.0, max=1.0)  # center heatmaps peak at 1
    refine_nms_kernel: int = _f(41, min=1, parity="odd")
    refine_max_instances: int = _f(5, min=1)
    # A second segmentation target: the network's own segmentation snapped to image edges
    # (bestie.refine.refine_semantic), with self-refinement, from seg_self_refine_iter on (its own
    # early segmentation is background everywhere); iterations 0: off. Not in the paper.
    seg_self_refine: SegRefineParams = field(default_factory=lambda: SegRefineParams(iterations=0))
    seg_self_refine_iter: int = _f(900, min=0)
    pairwise: PairwiseParams = field(default_factory=PairwiseParams)
    amp: bool = _f(True)  # only takes effect on CUDA
    channels_last: bool = _f(True)  # NHWC memory format for cuDNN's fast convolutions; only on CUDA
    workers: int = _f(2, min=0)


@dataclass(frozen=True)
class InferenceParams:
    """How a trained BESTIE network's outputs become instances (paper §3.4).

    One setting for every use of the network: the ``evaluate`` and ``export_coco`` stages
    and ``bestie predict``.
    """

    flip: bool = _f(True)  # average the outputs of the image and its mirror image
    seg_refine: SegRefineParams = field(default_factory=SegRefineParams)
    center_thresh: float = _f(0.1, min=0.0, max=1.0)  # center heatmaps peak at 1
    nms_kernel: int = _f(41, min=1, parity="odd")
    min_size: int = _f(50, min=1)


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluation on val (the predictions themselves follow ``inference``)."""

    point_guided: bool = _f(False)  # point supervision: use the given val points as centers
    gallery: int = _f(6, min=0)  # val images drawn in the prediction gallery


@dataclass(frozen=True)
class ExportCocoParams:
    """BESTIE's predictions on the training images as COCO pseudo labels (docs/method.md §8).

    Inference follows the ``inference`` section.
    """

    # fixed: instances scoring below score_thresh are dropped; labels: below the score at which
    # the classes found in each training image agree best with its image-level labels (bestie.pseudo_export)
    threshold: str = _f("labels", choices=("fixed", "labels"))
    score_thresh: float = _f(0.3, min=0.0, max=1.0)
    label_filter: bool = _f(True)  # drop instances of a class the image is not labelled with
    point_guided: bool = _f(True)  # point supervision: the training points guide the grouping


@dataclass(frozen=True)
class MaskRCNNParams(LoopCadenceParams):
    """torchvision's Mask R-CNN trained on the exported pseudo labels (docs/method.md §8)."""

    # bestie.maskrcnn.MASKRCNN_BACKBONES (it imports this module; a test keeps the two equal)
    backbone: str = _f("small_fpn", choices=("small_fpn", "resnet50_fpn"))
    pretrained: bool = _f(False)  # ImageNet weights for resnet50_fpn (needs internet)
    anchor_size: int = _f(16, min=1)  # anchors of the finest FPN level; doubles per level
    min_size: list[int] = _f([128], min=1, nonempty=True)  # short side: drawn from the list in training, the last at test
    max_size: int = _f(256, min=1)  # long side cap
    iterations: int = _f(2000, min=1)
    batch_size: int = _f(2, min=1)  # small batches, many updates: best for a short CPU schedule
    optimizer: str = _f("adamw", choices=("sgd", "adamw"))  # sgd: momentum 0.9
    lr: float = _f(0.002, min=0.0)
    weight_decay: float = _f(0.05, min=0.0)
    warmup_iters: int = _f(100, min=0)
    poly_power: float = _f(0.9, min=0.0)
    flip: bool = _f(True)  # random horizontal flips in training
    score_thresh: float = _f(0.05, min=0.0, max=1.0)  # detections kept at inference
    detections_per_image: int = _f(50, min=1)
    mask_thresh: float = _f(0.5, min=0.0, max=1.0)  # soft mask -> binary mask
    workers: int = _f(0, min=0)


@dataclass(frozen=True)
class Params:
    supervision: str = _f("cls", choices=SUPERVISIONS)
    seed: int = _f(3407, min=0, max=MAX_SEED)
    data: DataParams = field(default_factory=DataParams)
    synthesize: SynthesizeParams = field(default_factory=SynthesizeParams)
    classifier: ClassifierParams = field(default_factory=ClassifierParams)
    peaks: PeaksParams = field(default_factory=PeaksParams)
    wsss: WSSSParams = field(default_factory=WSSSParams)
    wsss_network: WSSSNetworkParams = field(default_factory=WSSSNetworkParams)
    pseudo_labels: PseudoLabelParams = field(default_factory=PseudoLabelParams)
    train: TrainParams = field(default_factory=TrainParams)
    inference: InferenceParams = field(default_factory=InferenceParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export_coco: ExportCocoParams = field(default_factory=ExportCocoParams)
    maskrcnn: MaskRCNNParams = field(default_factory=MaskRCNNParams)

    def __post_init__(self) -> None:
        s = self.synthesize
        if s.min_side > s.max_side:
            raise BestieError(
                f"params: synthesize.min_side ({s.min_side}) must not exceed "
                f"synthesize.max_side ({s.max_side})"
            )
        if s.max_classes_per_image > s.num_classes:
            raise BestieError(
                "params: synthesize.max_classes_per_image "
                f"({s.max_classes_per_image}) exceeds synthesize.num_classes ({s.num_classes})"
            )
        for name in ("classifier", "wsss_network", "train"):
            section = getattr(self, name)
            if section.scale_min > section.scale_max:
                raise BestieError(
                    f"params: {name}.scale_min ({section.scale_min}) must not exceed "
                    f"{name}.scale_max ({section.scale_max})"
                )


def parse_params(raw: dict | None) -> Params:
    """Validate a params mapping (as read from YAML) into :class:`Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BestieError("params: the top level must be a mapping")
    return build(Params, raw)


def parse_section(name: str, raw: Any) -> Any:
    """Validate one top-level section (e.g. ``inference`` settings recorded with a result)."""
    hints = typing.get_type_hints(Params)
    if name not in hints:
        raise KeyError(name)
    return check_value(raw, hints[name], name, {})


def read_params_file(path: str | Path) -> Any:
    """The YAML of a params file, unvalidated; a missing file or bad YAML is one-line :class:`BestieError`."""
    if not Path(path).is_file():
        raise BestieError(f"{path}: params file not found")
    return read_yaml_file(path)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise :class:`BestieError` naming any bad key."""
    return parse_params(read_params_file(path))


def to_dict(obj: Any) -> dict:
    """A plain-dict copy of a params dataclass (for checkpoints and logs)."""
    return dataclasses.asdict(obj)
