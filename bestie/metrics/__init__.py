"""Every quality figure the stages report, one module a kind of prediction.

- :mod:`bestie.metrics.classification`: image-level labels (the ``classifier`` stage).
- :mod:`bestie.metrics.peaks`: how well peak points mark the instances (``peaks``).
- :mod:`bestie.metrics.segmentation`: semantic label maps, pixel IoU (``wsss``).
- :mod:`bestie.metrics.instances`: instance masks: VOC instance mAP and COCO mask AP
  (``evaluate``, ``maskrcnn``), pseudo instances (``pseudo_labels``, ``export_coco``).
"""
