import json

from conftest import assert_labelled

from mvq.demo import run_demo

TINY = ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
        "model.dim2=8", "data.train_limit=64", "data.val_limit=16", "train.batch_size=8",
        "train.grid_images=4"]


def test_demo_writes_table_summary_and_grid(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    rows = run_demo(out=str(tmp_path / "demo"), steps=3, num_masks=8, progress=False, eval_n=12,
                    overrides=TINY)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary == rows and [r["model"] for r in rows] == ["hvqvae", "mvqvae"]
    for r in rows:
        for key in ("model", "tokens", "bits_per_image", "val_mse", "val_psnr", "lpips", "rfid"):
            assert key in r
        assert r["tokens"] == "1+1" and r["steps"] == 3 and r["eval_images"] == 12
        assert 0 < r["val_mse"] < 1 and r["rfid"] >= 0 and 0 <= r["lpips"] <= 1
    # 2 x log2(8) (+ log2(J) = 3 bits: the mask is an index into a bank of J = 8 masks)
    assert rows[0]["bits_per_image"] == 6 and rows[1]["bits_per_image"] == 6 + 3
    assert_labelled(tmp_path / "demo" / "comparison.png")
    out = capsys.readouterr().out
    assert "| hvqvae | 1+1 |" in out and "| mvqvae | 1+1 |" in out
