"""Pictures: the class-map overlay of the wsss gallery."""

from __future__ import annotations

import numpy as np

from bestie.data.png import voc_palette
from bestie.visualize import cam_overlay


def test_cam_overlay_tints_toward_the_strongest_class():
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    cams = np.zeros((2, 2, 3), dtype=np.float32)
    cams[0, 0, 0] = 1.0  # full strength: the class colour itself
    cams[1, 0, 1], cams[0, 0, 1] = 0.5, 0.25  # the stronger map wins, at its strength
    overlay = cam_overlay(image, cams, [4, 6])
    palette = np.asarray(voc_palette()).reshape(256, 3)
    assert overlay[0, 0].tolist() == palette[5].tolist()
    assert overlay[0, 1].tolist() == (0.5 * 100 + 0.5 * palette[7]).astype(np.uint8).tolist()
    assert (overlay[1] == 100).all()  # no CAM: half-bright grey
    assert (cam_overlay(image, cams[:0], []) == 100).all()
