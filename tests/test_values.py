"""The value objects that replace long option lists (Decoding, Sampling, EvalSettings,
PriorTraining) and the one metric table: checked once when made, read everywhere."""

import math

import pytest

from mvq.errors import MvqError
from mvq.evaluation import EvalSettings, format_comparison, format_table, metrics_table
from mvq.inference.sample import Sampling
from mvq.reproduce import report
from mvq.train.prior import PriorTraining
from mvq.values.decoding import Decoding


@pytest.mark.parametrize("kw, fragment", [
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
    ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
    ({"temperature": True}, "temperature"),
    ({"top_k": 0}, "top_k must be None or an integer >= 1, got 0"),
    ({"top_k": 2.0}, "top_k must be None or an integer"),
    ({"top_p": 0}, "top_p must be None or a number in \\(0, 1\\]"),
    ({"top_p": 1.01}, "top_p must be None"),
    ({"steps": 0}, "steps must be None or an integer >= 1, got 0"),
    ({"choice_temperature": float("inf")}, "choice_temperature must be None or a finite"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_decoding_refuses_bad_values_when_made(kw, fragment):
    with pytest.raises(MvqError, match=fragment):
        Decoding(**kw)


def test_decoding_options_are_the_set_ones_without_the_seed():
    assert Decoding().options() == {"temperature": 1.0}
    d = Decoding(temperature=0, top_k=5, steps=8, seed=7)
    assert d.options() == {"temperature": 0, "top_k": 5, "steps": 8}
    with pytest.raises(AttributeError):  # frozen: a checked value stays checked
        d.top_k = 0


def test_decoding_for_prior_asks_the_prior_once():
    seen = []

    class Prior:
        def check_decoding(self, options):
            seen.append(dict(options))
            if "steps" in options:
                raise MvqError("no steps")

    assert Decoding(top_p=0.5).for_prior(Prior()) == {"temperature": 1.0, "top_p": 0.5}
    with pytest.raises(MvqError, match="no steps"):
        Decoding(steps=3).for_prior(Prior())
    assert seen == [{"temperature": 1.0, "top_p": 0.5}, {"temperature": 1.0, "steps": 3}]


@pytest.mark.parametrize("make, fragment", [
    (lambda: Sampling(n=0), "n must be an integer >= 1, got 0"),
    (lambda: Sampling(batch_size=True), "batch_size must be an integer >= 1"),
    (lambda: Sampling(decoding={"temperature": 1.0}), "decoding must be an mvq.values.decoding"),
    (lambda: EvalSettings(n=0), "n must be a positive number of images"),
    (lambda: EvalSettings(batch_size=2.5), "batch_size must be a positive integer"),
    (lambda: PriorTraining(steps=0), "steps, batch_size, val_every and log_every must be >= 1"),
    (lambda: PriorTraining(val_fraction=1.0), "val_fraction must be in \\(0, 1\\)"),
    (lambda: PriorTraining(kind="transformer"), "transformer"),
])
def test_settings_refuse_bad_values_when_made(make, fragment):
    with pytest.raises(MvqError, match=fragment):
        make()


def test_sampling_keeps_classes_as_a_tuple():
    assert Sampling(n=4, classes=[1, 3]).classes == (1, 3)
    assert Sampling(decoding=None).decoding == Decoding()


def test_functions_refuse_settings_of_another_type(tmp_path):
    from mvq.evaluation import evaluate_checkpoint, evaluate_samples
    from mvq.inference.sample import sample_codes_and_images, sample_images
    from mvq.train.prior import train_prior

    calls = [
        lambda: evaluate_checkpoint(tmp_path, {"n": 4}),
        lambda: evaluate_samples(tmp_path, tmp_path, EvalSettings(), decoding={"seed": 1}),
        lambda: sample_codes_and_images(tmp_path, tmp_path, Decoding()),
        lambda: sample_images(tmp_path, tmp_path, tmp_path / "x.png", 16),
        lambda: train_prior(tmp_path / "t.safetensors", tmp_path / "p", {"steps": 2}),
    ]
    for call in calls:
        with pytest.raises(MvqError, match="must be an mvq\\.[a-z.]+\\.[A-Za-z]+ \\(or None"):
            call()
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


# --- the one metric table -------------------------------------------------------------------

# What the reproduce report held before it read the table (written out here as the reference)
OLD_COLUMNS = {"mse": "MSE", "psnr": "PSNR dB", "ssim": "SSIM", "lpips": "LPIPS",
               "rfid": "rFID", "prd_f8": "F_8", "prd_f1_8": "F_1/8", "fid_samples": "FID*",
               # added: table5 rows hold the reconstructions' and the samples' PRD
               "prd_f8_samples": "samples F_8", "prd_f1_8_samples": "samples F_1/8",
               "nll_primary_bits": "NLL prim. bits", "nll_secondary_bits": "NLL sec. bits",
               "nll_masked_bits": "NLL masked bits (MaskGIT)",
               # added: the frontier's prior NLL per image
               "nll_bits_image": "NLL bits/img",
               "tokens_s_per_img": "ms/img tokens", "sample_s_per_img": "ms/img tokens+decode"}
OLD_LOWER = {"mse", "lpips", "rfid", "fid_samples", "nll_primary_bits", "nll_secondary_bits",
             "nll_masked_bits", "tokens_s_per_img", "sample_s_per_img", "nll_bits_image"}
OLD_DIGITS = {"mse": 4, "psnr": 2, "ssim": 3, "lpips": 4, "rfid": 1, "prd_f8": 3,
              "prd_f1_8": 3, "fid_samples": 1}


def test_report_reads_the_one_table():
    assert report.METRIC_NAMES == OLD_COLUMNS
    assert list(report.METRIC_NAMES) == list(OLD_COLUMNS)  # column order kept
    assert {k for k in OLD_COLUMNS if metrics_table.lower_is_better(k)} == OLD_LOWER
    for key, digits in OLD_DIGITS.items():
        assert metrics_table.BY_KEY[key].digits == digits
    assert metrics_table.BY_KEY["tokens_s_per_img"].scale == 1000.0  # seconds shown as ms


def test_table_rows_are_complete_and_unique():
    keys = [m.key for m in metrics_table.TABLE]
    assert len(keys) == len(set(keys))
    for m in metrics_table.TABLE:
        assert m.better in ("lower", "higher", "")
        assert m.needs in ("images", "features", "tokens", "model", "samples")
        assert not m.asked_by or m.asked_by in (metrics_table.METRICS
                                                + metrics_table.SAMPLE_METRICS)
    # every --metrics name asks for at least one row
    asked = {m.asked_by for m in metrics_table.TABLE}
    assert set(metrics_table.METRICS + metrics_table.SAMPLE_METRICS) <= asked
    assert metrics_table.needs_features(("mse", "prd")) and metrics_table.needs_features(("fid",))
    assert not metrics_table.needs_features(("mse", "psnr", "ssim", "lpips", "usage", "nll"))


def test_markdown_labels_and_formats_come_from_the_table():
    result = {"model_type": "vqvae", "n": 2, "metrics": {
        "psnr": 31.23456, "rfid": 12.3456, "parameters": 1234567, "mystery": 3,
        "lpips": float("nan"), "tokens_s_per_img": None}}
    table = format_table(result)
    assert "| PSNR (dB) | 31.23 |" in table and "| rFID | 12.346 |" in table
    assert "| parameters | 1,234,567 |" in table and "| mystery | 3 |" in table
    assert "| LPIPS (alex) | nan |" in table and "| token sampling, s / image | n/a |" in table
    both = format_comparison([result, {"metrics": {"psnr": 20.0}}], ["a", "b"])
    assert "| run | PSNR (dB) | rFID |" in both and "| b | 20.00 | n/a |" in both
    assert math.isnan(result["metrics"]["lpips"])  # formatting leaves the result alone
