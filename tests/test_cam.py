"""Class activation maps: image classes only, relu, scales, the mirror pass, normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bestie import cam


class FixedCAMs(nn.Module):
    """A stand-in classifier whose class maps are given: the input only sets their size.

    ``cams`` is ``[C, h, w]`` for an input of size (h, w); inputs of another size get the maps
    resized (nearest), so multi-scale averaging sees the same maps at every scale.
    """

    def __init__(self, cams: Tensor) -> None:
        super().__init__()
        self.cams = cams
        self.calls: list[tuple[int, ...]] = []

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        self.calls.append(tuple(images.shape))
        maps = nn.functional.interpolate(self.cams[None], size=images.shape[-2:], mode="nearest")
        # Mark flipped inputs: a mirrored image puts its "signature" column on the other side.
        flipped = images[:, 0, 0, -1] > images[:, 0, 0, 0]
        maps = maps.expand(len(images), -1, -1, -1).clone()
        maps[flipped] = maps[flipped].flip(-1)
        return {"logits": maps.mean(dim=(-2, -1)), "cams": maps}


def _signed_image(height: int = 8, width: int = 8) -> Tensor:
    """An image whose top-left pixel is brighter than its top-right one (flip detector)."""
    image = torch.zeros(3, height, width)
    image[:, 0, 0] = 1.0
    return image


def wsss_cams(model: nn.Module, image: Tensor, classes: Tensor, **options) -> Tensor:
    """The CAMs of one image as the WSSS maps take them."""
    return cam.class_activation_maps(
        model, image[None], classes.new_zeros(len(classes)), classes, normalize="total", **options
    )


# -- class activation maps -------------------------------------------------------------------


def test_cams_only_for_the_image_classes_and_peak_at_one() -> None:
    maps = torch.zeros(4, 8, 8)
    maps[0, :, :4] = 2.0  # class 0: left half
    maps[2, 2:4, 2:4] = 5.0  # class 2: a square
    maps[3] = 9.0  # class 3 is not in the image: must not appear
    model = FixedCAMs(maps)
    cams = wsss_cams(model, _signed_image(), torch.tensor([0, 2]), scales=(1.0,), flip=False)
    assert cams.shape == (2, 8, 8) and cams.dtype == torch.float32
    assert torch.equal(cams[0], (maps[0] / 2.0))
    assert torch.equal(cams[1], (maps[2] / 5.0))


def test_cams_are_relu_before_averaging() -> None:
    maps = torch.full((1, 4, 4), -3.0)
    maps[0, 1, 1] = 1.0
    cams = wsss_cams(FixedCAMs(maps), _signed_image(4, 4), torch.tensor([0]), flip=False)
    expected = torch.zeros(4, 4)
    expected[1, 1] = 1.0
    assert torch.equal(cams[0], expected)


def test_flip_averages_the_mirrored_image_mapped_back() -> None:
    # The stand-in mirrors its maps for a mirrored input, as a CNN does: a correct flip
    # average mirrors them back and so sees the same map twice.
    maps = torch.zeros(1, 4, 4)
    maps[0, :, 0] = 1.0
    model = FixedCAMs(maps)
    cams = wsss_cams(model, _signed_image(4, 4), torch.tensor([0]), flip=True)
    assert model.calls == [(2, 3, 4, 4)]  # image and mirror in one batch
    assert torch.equal(cams[0], maps[0] / 1.0)

    # A model blind to the mirroring gives a symmetric average: proof the mirror's maps are
    # flipped back before they are added.
    class Static(nn.Module):
        def forward(self, images: Tensor) -> dict[str, Tensor]:
            return {"cams": maps.expand(len(images), -1, -1, -1)}

    cams = wsss_cams(Static(), _signed_image(4, 4), torch.tensor([0]), flip=True)
    assert torch.allclose(cams[0], cams[0].flip(-1))
    assert cams[0, 0, 0] == cams[0, 0, 3] == 1.0


def test_multi_scale_runs_every_scale_at_the_image_size() -> None:
    maps = torch.zeros(1, 8, 8)
    maps[0, 2:6, 2:6] = 1.0
    model = FixedCAMs(maps)
    cams = wsss_cams(model, _signed_image(8, 8), torch.tensor([0]), scales=(1.0, 0.5, 2.0), flip=False)
    assert [c[-2:] for c in model.calls] == [(8, 8), (4, 4), (16, 16)]
    assert cams.shape == (1, 8, 8)
    assert cams.max() == 1.0 and cams[0, 0, 0] == 0.0 and cams[0, 4, 4] == 1.0


@pytest.mark.parametrize(
    ("images", "image_index", "options", "message"),
    [
        (torch.zeros(1, 8, 8), torch.tensor([0]), {}, "images must be"),
        (torch.zeros(1, 3, 8, 8), torch.tensor([0, 0]), {}, "image_index, classes"),
        (torch.zeros(1, 3, 8, 8), torch.tensor([0]), {"scales": ()}, "scales must be"),
        (torch.zeros(1, 3, 8, 8), torch.tensor([0]), {"scales": (1.0, 0.0)}, "scales must be"),
        (torch.zeros(1, 3, 8, 8), torch.tensor([0]), {"normalize": "max"}, "normalize must be"),
        (torch.zeros(1, 3, 8, 8), torch.tensor([0]), {"image_sizes": torch.tensor([[8, 6]])}, "padded batch"),
        (
            torch.zeros(1, 3, 8, 8),
            torch.tensor([0]),
            {"image_sizes": torch.tensor([[8, 6]]), "normalize": "per_pass", "scales": (1.0, 0.5)},
            "padded batch",
        ),
    ],
)
def test_cams_reject_bad_input(images: Tensor, image_index: Tensor, options: dict, message: str) -> None:
    options = {"normalize": "total", **options}
    with pytest.raises(ValueError, match=message):
        cam.class_activation_maps(FixedCAMs(torch.zeros(1, 8, 8)), images, image_index, torch.tensor([0]), **options)


def test_no_pairs_give_no_maps_without_running_the_model() -> None:
    model = FixedCAMs(torch.zeros(1, 8, 8))
    none = torch.zeros(0, dtype=torch.int64)
    maps = cam.class_activation_maps(model, torch.zeros(2, 3, 8, 6), none, none, normalize="per_pass")
    assert maps.shape == (0, 8, 6) and model.calls == []


def test_flip_within_width_and_the_mirror_pass_of_a_padded_batch() -> None:
    x = torch.arange(8.0).view(1, 1, 1, 8).repeat(2, 1, 1, 1)
    flipped = cam.flip_within_width(x, torch.tensor([8, 5]))
    assert flipped[0, 0, 0].tolist() == [7, 6, 5, 4, 3, 2, 1, 0]
    assert flipped[1, 0, 0].tolist() == [4, 3, 2, 1, 0, 5, 6, 7]

    class Echo(nn.Module):
        """Class maps = the first colour channel; remembers its input."""

        def forward(self, images: Tensor) -> dict[str, Tensor]:
            self.seen = images
            return {"cams": images[:, :1]}

    model, images, sizes = Echo(), torch.rand(2, 3, 4, 8), torch.tensor([[4, 8], [4, 5]])
    pairs = torch.tensor([0, 1]), torch.tensor([0, 0])
    maps = cam.class_activation_maps(model, images, *pairs, normalize="per_pass", image_sizes=sizes)
    # The images and their mirrors within their widths go through the model as one batch.
    assert torch.equal(model.seen, torch.cat([images, cam.flip_within_width(images, sizes[:, 1])]))
    # The mirror pass, flipped back, is the image's own map: each pass normalised, averaged.
    own = images[:, 0] * cam.within_images(sizes, (4, 8))[:, 0]
    torch.testing.assert_close(maps, own / own.amax(dim=(-2, -1), keepdim=True))
    assert (maps[1, :, 5:] == 0).all()  # the padding holds no map


