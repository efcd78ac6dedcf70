from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bestie.errors import BestieError
from bestie.peaks import batch_peaks, read_peaks, write_peaks

RAW = dict(smooth_kernel=1, nms_kernel=3, max_per_class=25, score_thresh=0.1)


class GivenCAMs(nn.Module):
    """A stand-in classifier returning given class maps: ``cams`` [B, C, h, w] for a batch,
    then ``mirrored`` [B, C, h, w] for its mirror images when the batch holds them too."""

    def __init__(self, cams: torch.Tensor, mirrored: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cams, self.mirrored = cams, mirrored

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(images) == len(self.cams):
            return {"cams": self.cams}
        return {"cams": torch.cat([self.cams, self.mirrored])}


def extract(cams, labels, sizes, *, flipped_cams=None, input_size=None, **options):
    """Peaks of given class maps of a batch whose padded input is ``input_size`` (default:
    the largest image)."""
    labels, sizes = torch.as_tensor(labels), torch.as_tensor(sizes)
    input_size = input_size or tuple(sizes.max(dim=0).values.tolist())
    images = torch.zeros(len(cams), 3, *input_size)
    model = GivenCAMs(cams, flipped_cams)
    return batch_peaks(model, images, labels, sizes, flip=flipped_cams is not None, **options)


def maps_with(shape: tuple[int, ...], values: dict[tuple[int, ...], float]) -> torch.Tensor:
    """A zero tensor with the given entries set."""
    maps = torch.zeros(shape)
    for index, value in values.items():
        maps[index] = value
    return maps


def peaks_of(cams, labels, sizes, **options):
    return extract(cams, labels, sizes, **{**RAW, **options})


# Class 0 of a 16 x 16 image: peaks 1.0 at (x=3, y=4), 0.5 at (6, 4), 0.3 at (12, 12).
THREE = maps_with((1, 1, 16, 16), {(0, 0, 4, 3): 1.0, (0, 0, 4, 6): 0.5, (0, 0, 12, 12): 0.3})


def test_local_maxima_are_found_with_their_scores():
    (peaks,) = peaks_of(THREE, [[1]], [[16, 16]])
    np.testing.assert_allclose(peaks, [[3, 4, 0, 1.0], [6, 4, 0, 0.5], [12, 12, 0, 0.3]])


def test_nms_window_suppresses_a_lower_neighbour():
    # (6, 4) is 3 px from (3, 4): inside a 7 x 7 window, outside a 5 x 5 one.
    (peaks,) = peaks_of(THREE, [[1]], [[16, 16]], nms_kernel=7)
    np.testing.assert_allclose(peaks[:, :2], [[3, 4], [12, 12]])
    (peaks,) = peaks_of(THREE, [[1]], [[16, 16]], nms_kernel=5)
    assert len(peaks) == 3


def test_max_per_class_keeps_the_highest():
    (peaks,) = peaks_of(THREE, [[1]], [[16, 16]], max_per_class=2)
    np.testing.assert_allclose(peaks[:, 3], [1.0, 0.5])


def test_score_threshold_is_inclusive():
    (peaks,) = peaks_of(THREE, [[1]], [[16, 16]], score_thresh=0.5)
    np.testing.assert_allclose(peaks[:, 3], [1.0, 0.5])


def test_zero_is_never_a_peak_even_with_threshold_zero():
    (peaks,) = peaks_of(THREE, [[1]], [[16, 16]], score_thresh=0.0)
    assert len(peaks) == 3


def test_only_the_image_classes_and_each_map_divided_by_its_max():
    cams = maps_with((1, 3, 8, 8), {(0, 0, 2, 2): 5.0, (0, 1, 5, 5): 0.2, (0, 2, 1, 6): -3.0})
    (peaks,) = peaks_of(cams, [[0, 1, 1]], [[8, 8]])
    # class 0 is not labelled; class 1 normalised to 1; class 2 is negative only (relu -> nothing).
    np.testing.assert_allclose(peaks, [[5, 5, 1, 1.0]])


def test_flip_averaging_mirrors_the_second_pass_back():
    cams = maps_with((1, 1, 8, 8), {(0, 0, 3, 2): 2.0})
    flipped = maps_with((1, 1, 8, 8), {(0, 0, 3, 2): 4.0})  # x = 2 in the mirror is x = 5 here
    (peaks,) = extract(
        cams, torch.tensor([[1]]), torch.tensor([[8, 8]]), flipped_cams=flipped, **RAW
    )
    np.testing.assert_allclose(peaks, [[2, 3, 0, 0.5], [5, 3, 0, 0.5]])


def test_flip_of_a_padded_image_stays_inside_its_width():
    # Image 1 is 6 px wide, padded to 8: its mirror of x = 1 is x = 4, not 6.
    cams = maps_with((2, 1, 8, 8), {(0, 0, 3, 1): 1.0, (1, 0, 3, 1): 1.0})
    (wide, narrow) = extract(
        cams, torch.tensor([[1], [1]]), torch.tensor([[8, 8], [8, 6]]), flipped_cams=cams, **RAW
    )
    np.testing.assert_allclose(wide[:, :2], [[1, 3], [6, 3]])
    np.testing.assert_allclose(narrow[:, :2], [[1, 3], [4, 3]])


def test_class_maps_are_resized_to_the_image():
    # A 4 x 4 map on a 12 x 12 image: cell (col 2, row 1) is centred on pixel (7, 4).
    cams = maps_with((1, 1, 4, 4), {(0, 0, 1, 2): 1.0})
    (peaks,) = peaks_of(cams, [[1]], [[12, 12]])
    np.testing.assert_allclose(peaks, [[7, 4, 0, 1.0]])


def test_a_padded_batch_gives_what_each_image_gives_alone():
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.random((2, 2, 7, 5), dtype=np.float32))  # (pass, flipped pass)
    large = torch.from_numpy(rng.random((2, 2, 9, 9), dtype=np.float32))
    padded = torch.zeros(2, 2, 2, 9, 9)  # pass, image, class, H, W
    padded[:, 0, :, :7, :5], padded[:, 1] = small, large
    options = dict(smooth_kernel=3, nms_kernel=3, max_per_class=25, score_thresh=0.1)
    labels, sizes = torch.tensor([[1, 1], [1, 0]]), torch.tensor([[7, 5], [9, 9]])
    batch = extract(padded[0], labels, sizes, flipped_cams=padded[1], **options)
    alone_small = extract(small[:1], labels[:1], sizes[:1], flipped_cams=small[1:], **options)
    alone_large = extract(large[:1], labels[1:], sizes[1:], flipped_cams=large[1:], **options)
    np.testing.assert_allclose(batch[0], alone_small[0], rtol=1e-5)
    np.testing.assert_allclose(batch[1], alone_large[0], rtol=1e-5)
    assert len(batch[0]) > 2 and (batch[1][:, 2] == 0).all()


def test_even_kernels_are_refused():
    with pytest.raises(ValueError, match="nms_kernel"):
        peaks_of(THREE, [[1]], [[16, 16]], nms_kernel=4)




def test_peaks_file_round_trip_and_bad_lines(tmp_path):
    peaks = [np.array([[3, 4, 0, 0.25], [7.5, 1, 2, 1.0]], np.float32), np.zeros((0, 4), np.float32)]
    path = tmp_path / "peaks.tsv"
    write_peaks(path, ["a", "b"], peaks)
    assert path.read_text().splitlines()[1] == "a\t3\t4\t0\t0.250000"
    read = read_peaks(path)
    assert list(read) == ["a"]  # b has no peaks
    np.testing.assert_array_equal(read["a"], peaks[0])
    path.write_text(path.read_text() + "c\t1\t2\n")
    with pytest.raises(BestieError, match=r"peaks.tsv:4"):
        read_peaks(path)
    path.write_text("x y class score\n")
    with pytest.raises(BestieError, match="header"):
        read_peaks(path)


def test_a_batch_without_labels_has_no_peaks():
    assert [len(p) for p in peaks_of(THREE.repeat(2, 1, 1, 1), [[0], [0]], [[16, 16]] * 2)] == [0, 0]


def test_maps_of_a_larger_padded_input_are_resized_to_it_and_cut_to_the_image():
    # 4 x 4 maps of a 12 x 12 padded input holding a 9 x 9 image: cell (2, 1) is pixel
    # (7, 4) of the image; cell (3, 3) is pixel (10, 10), in the padding: it neither counts
    # for the max normalisation nor is a peak; only its tail reaches the image's corner.
    cams = maps_with((1, 1, 4, 4), {(0, 0, 1, 2): 0.5, (0, 0, 3, 3): 1.0})
    (peaks,) = peaks_of(cams, [[1]], [[9, 9]], input_size=(12, 12))
    np.testing.assert_allclose(peaks, [[7, 4, 0, 1.0], [8, 8, 0, 2 / 9]], rtol=1e-5)


def test_pad_collate_rounds_up_to_the_size_divisor():
    from bestie.data.datasets import pad_collate

    batch = [(torch.ones(3, 5, 9), torch.tensor([1.0])), (torch.ones(3, 7, 4), torch.tensor([0.0]))]
    images, labels, sizes = pad_collate(batch, size_divisor=8)
    assert images.shape == (2, 3, 8, 16) and sizes.tolist() == [[5, 9], [7, 4]]
    assert images[1, :, :7, :4].eq(1).all() and images[1, :, :, 4:].eq(0).all()
    assert pad_collate(batch)[0].shape == (2, 3, 7, 9)
