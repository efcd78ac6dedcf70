"""The synthetic datasets (the embedded one and a held-out style), in the PASCAL VOC 2012 layout.

Small enough to run the whole pipeline on a laptop CPU, hard enough that weak supervision
is a real problem:

- each class is a shape with its own texture and a family of hues around its own hue
  (``hue_spread`` wide: 1 makes colour say nothing about the class); the clutter and the
  background take any hue, so colour alone also fires on clutter, as context does on
  real photographs;
- the background is textured and cluttered with class-free distractor shapes;
- objects occlude each other (an instance's mask is its visible part);
- a share of the images holds two touching instances of the same class: the case that
  semantic knowledge transfer cannot split and self-refinement has to recover;
- masks carry a thin void band (255) on instance borders, as VOC's do.

Every image is a pure function of ``(params, split, index)`` with its own seeded
generator, so the dataset is byte-identical for the same params.

``synthesize.style`` picks how the images look (:data:`STYLES`): ``embedded`` (the default, on
which the defaults were chosen), ``heldout`` (other shapes, textures, sizes and clutter, never
tuned on) or ``heldout_looks`` (the held-out looks at the embedded sizes and occlusion); the scene
composition above is shared.

The package: :mod:`~bestie.data.synthetic.appearance` (the embedded style's shapes, textures and
background; the colours of every style), :mod:`~bestie.data.synthetic.heldout` (the held-out
style's looks), :mod:`~bestie.data.synthetic.styles` (the style registry),
:mod:`~bestie.data.synthetic.scene` (one image and its masks), :mod:`~bestie.data.synthetic.dataset`
(the dataset on disk, and its statistics).
"""

from bestie.data.synthetic.appearance import CLASS_NAMES
from bestie.data.synthetic.dataset import dataset_statistics, generate, statistics_from_root
from bestie.data.synthetic.scene import SyntheticImage, render_image, void_band
from bestie.data.synthetic.styles import STYLES

__all__ = [
    "CLASS_NAMES",
    "STYLES",
    "SyntheticImage",
    "render_image",
    "void_band",
    "generate",
    "dataset_statistics",
    "statistics_from_root",
]
