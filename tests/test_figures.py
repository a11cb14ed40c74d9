import numpy as np
import pytest
import torch
from conftest import assert_labelled
from PIL import Image

from mvq.errors import MvqError
from mvq.files.figures import (
    GAP,
    HEAT,
    MARGIN,
    Figure,
    change_heatmap,
    change_size,
    readable_scale,
    text_size,
    wrap,
)
from mvq.inference.sample import sample_figure


def _rows(n_rows=2, n=3, size=10, channels=1):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(n, channels, size, size, generator=g) for _ in range(n_rows)]


def test_readable_scale_makes_small_images_at_least_84_px():
    assert [readable_scale(s) for s in (28, 32, 14, 64, 84, 200)] == [3, 3, 6, 2, 1, 1]


def test_images_are_upscaled_nearest_and_placed_after_the_label_bands():
    rows = _rows(n_rows=1, n=2, size=4)
    fig = Figure(rows, "t", ["row"], ["a", "b"])
    img = np.asarray(fig.render(scale=5))
    left = 2 * MARGIN + text_size("row")[0]
    # the first image, 4x4 pixels -> 20x20 blocks of 5x5 equal pixels, found in the figure
    want = np.kron((rows[0][0, 0].numpy() * 255 + 0.5).astype(np.uint8), np.ones((5, 5), np.uint8))
    col_w = max(20, text_size("a")[0] + 4)
    x = left + (col_w - 20) // 2
    hits = [y for y in range(img.shape[0] - 19) if (img[y : y + 20, x : x + 20, 0] == want).all()]
    assert len(hits) == 1 and hits[0] > MARGIN + text_size("t", 16)[1]  # below title and labels


def test_size_grows_with_columns_and_rows_by_the_cell_and_gap():
    one = Figure(_rows(1, 3), "title").render(scale=9)
    wide = Figure(_rows(1, 4), "title").render(scale=9)
    tall = Figure(_rows(2, 3), "title").render(scale=9)
    assert wide.width - one.width == 90 + GAP and wide.height == one.height
    assert tall.height - one.height == 90 + GAP and tall.width == one.width


def test_labels_and_title_are_drawn_in_their_bands():
    rows = _rows(2, 3, size=28)
    bare = Figure(rows, "").render()
    fig = Figure(rows, "A title", ["original", "model"], ["c0", "c1", "c2"], note="a legend")
    img = np.asarray(fig.render())
    assert img.shape[1] > bare.width and img.shape[0] > bare.height  # room for the text
    left = 2 * MARGIN + text_size("original")[0]
    head = MARGIN + text_size("A title", 16)[1] + MARGIN
    assert (img[:head, :, :] < 128).any()  # the title's ink
    band = img[head:, MARGIN:left - MARGIN]  # the row-label band holds no image, only text
    assert (band < 128).any() and (band == 255).mean() > 0.5
    assert (img[-MARGIN - text_size("a legend")[1]:, :, :] < 200).any()  # the note


def test_captions_widen_the_columns_and_only_their_row_grows():
    rows = _rows(2, 2, size=8)
    plain = Figure(rows, "t").render(scale=2)
    with_caps = Figure(rows, "t", captions=[[], ["a long caption", "x"]]).render(scale=2)
    assert with_caps.width > plain.width
    assert with_caps.height - plain.height == text_size("a long caption")[1] + 3


def test_rows_may_have_different_lengths_and_colour_images_pass_through():
    rows = [torch.ones(3, 3, 6, 6), torch.zeros(1, 3, 6, 6)]
    img = Figure(rows, "t").render(scale=1)
    assert img.mode == "RGB" and img.width > 3 * 6


def test_change_heatmap_against_a_hand_computed_case():
    a = torch.zeros(1, 3, 2, 2)
    b = a.clone()
    b[0, :, 0, 0] = 0.6  # mean over channels 0.6: the largest change
    b[0, 0, 1, 1] = 0.9  # mean over channels 0.3: half the largest
    heat = change_heatmap(a, b)
    assert torch.allclose(heat[0, :, 0, 0], torch.tensor(HEAT))
    assert torch.allclose(heat[0, :, 1, 1], 1 - 0.5 * (1 - torch.tensor(HEAT)))
    assert (heat[0, :, 0, 1] == 1).all() and (heat[0, :, 1, 0] == 1).all()
    assert torch.allclose(change_heatmap(a, b, top=1.2)[0, :, 0, 0],
                          1 - 0.5 * (1 - torch.tensor(HEAT)))
    assert change_size(a, b).tolist() == pytest.approx([(0.6 * 3 + 0.9) / 12])
    assert (change_heatmap(a, a) == 1).all()  # no change anywhere: white, not 0/0


def test_save_writes_a_png_and_an_oversized_grid_is_refused(tmp_path):
    path = Figure(_rows(), "t", ["x", "y"]).save(tmp_path / "f.png")
    assert Image.open(path).format == "PNG"
    with pytest.raises(MvqError, match="lower --n"):
        Figure([torch.zeros(400, 1, 28, 28)], "t").render(scale=3, fix="lower --n")


def test_long_titles_wrap_at_the_grid_width():
    assert wrap("aa bb cc", width=1) == "aa\nbb\ncc"
    assert wrap("aa bb", width=10_000) == "aa bb"
    long = "word " * 60
    img = Figure(_rows(1, 8, size=28), long).render()
    assert img.width < text_size(long, 16)[0]  # wrapped, not one line across


def test_class_conditional_samples_get_one_block_of_rows_per_class_named():
    images = torch.arange(5).float().view(5, 1, 1, 1).expand(5, 1, 4, 4) / 10
    fig = sample_figure(images, "t", torch.tensor([0, 0, 3, 3, 3]), ("a", "b", "c", "d"), per_row=2)
    assert [r[:, 0, 0, 0].mul(10).round().tolist() for r in fig.rows] == [[0, 1], [2, 3], [4]]
    assert fig.row_labels == ["a (0)", "d (3)", ""]
    assert sample_figure(images, "t", torch.tensor([7] * 5), ("a",)).row_labels == ["class 7 (7)"]
    assert sample_figure(images, "t", per_row=4).row_labels == []  # unconditional: no labels


def test_the_label_check_of_the_command_tests_can_fail(tmp_path):
    grey = [torch.full((3, 1, 28, 28), 0.4)] * 2
    bare = Figure(grey, "").save(tmp_path / "bare.png")
    titled = Figure(grey, "a title").save(tmp_path / "titled.png")
    labelled = Figure(grey, "a title", ["original", "model"]).save(tmp_path / "labelled.png")
    with pytest.raises(AssertionError, match="no title"):
        assert_labelled(bare, row_labels=False)
    with pytest.raises(AssertionError, match="no row labels"):
        assert_labelled(titled)
    assert_labelled(labelled)
