"""The grouping primitives shared by post-processing and self-refinement."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bestie.grouping import component_peaks, group_pixels


def test_group_pixels_nearest_center_of_own_group():
    votes = torch.tensor([[0.0, 0.0], [0.0, 9.0], [0.0, 5.0], [0.0, 0.0], [3.0, 3.0]])
    pixel_group = torch.tensor([0, 0, 0, 1, 2])
    centers = torch.tensor([[0.0, 10.0], [0.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    center_group = torch.tensor([0, 0, 1, 3])
    owner = group_pixels(votes, pixel_group, centers, center_group, num_groups=4)
    # pixel 2 is 4 from center 1 and 5 from center 0; pixel 3 may only use center 2 (its
    # group), although center 3 is nearer; group 2 has no center.
    assert owner.tolist() == [1, 0, 1, 2, -1]


def test_component_peaks_match_a_per_component_max_pool():
    """The batched crop computation equals masking each component and max-pooling the whole map."""
    generator = torch.Generator().manual_seed(0)
    batch, classes, height, width, slots = 2, 3, 40, 36, 5
    center = torch.rand(batch, classes, height, width, generator=generator)
    component_map = torch.randint(0, slots, (batch, height, width), generator=generator)
    class_of = torch.randint(0, classes, (batch * slots,), generator=generator)
    class_of[::slots] = -1
    pixel_component = component_map + torch.arange(batch)[:, None, None] * slots
    b, y, x = (component_map > 0).nonzero(as_tuple=True)
    group = pixel_component[b, y, x]
    peak_y, peak_x, peak_group, score = component_peaks(
        center, pixel_component, class_of, group, y, x, num_slots=slots, threshold=0.5, nms_kernel=7
    )
    found = set(zip(peak_group.tolist(), peak_y.tolist(), peak_x.tolist()))
    expected = set()
    for g in torch.unique(group).tolist():
        inside = pixel_component[g // slots] == g
        masked = torch.where(inside, center[g // slots, class_of[g]], float("-inf"))
        pooled = F.max_pool2d(masked[None, None], 7, stride=1, padding=3)[0, 0]
        ys, xs = ((masked == pooled) & (masked > 0.5) & inside).nonzero(as_tuple=True)
        expected |= {(g, int(py), int(px)) for py, px in zip(ys, xs)}
    assert found == expected and len(found) > 10
    torch.testing.assert_close(score, center[peak_group // slots, class_of[peak_group], peak_y, peak_x])
