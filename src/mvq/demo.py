"""`mvq demo`: the hierarchical VQ-VAE-2 baseline vs MVQ-VAE at 1+1 tokens, K=16, side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mvq.configuration.config import check_writable, load_config, model_type
from mvq.data import default_fashion_mnist_root, fashion_mnist_available
from mvq.evaluation import EvalSettings, evaluate_checkpoint
from mvq.files.figures import Figure
from mvq.files.outputs import write_text
from mvq.saved.pretrained import load_tokenizer
from mvq.train import build_data, train

PRESET = "fmnist_f28_k16_quick"
EVAL_N = 256  # fixed subset (first N test images) for LPIPS and rFID, the same for both models


def demo_config(name: str, out: Path, steps: int | None, num_masks: int | None,
                data_name: str, data_root: str | None, extra: list[str] | None = None):
    overrides = [f"model.type={name}", f"train.out_dir={out / name}",
                 f"data.name={data_name}", *(extra or [])]
    if data_root:
        overrides.append(f"data.root={data_root}")
    if steps is not None:
        overrides += [f"train.steps={steps}", f"train.val_every={steps}",
                      f"train.ckpt_every={steps}"]
    if num_masks is not None:
        overrides.append(f"model.num_masks={num_masks}")
    return load_config(PRESET, overrides)


def demo_models() -> tuple[str, str]:
    """The two model types the demo compares, in its order: the same tokenizer without MVQ's
    mask (the hierarchical baseline), then the preset's MVQ type."""
    masked = load_config(PRESET).model.type
    return model_type(masked).unmasked, masked


def pick_data(data_root: str | None) -> tuple[str, str | None]:
    if fashion_mnist_available(data_root):
        return "fashion-mnist", data_root or default_fashion_mnist_root()
    print("mvq demo: FashionMNIST was not found (install it with `sudo apt-get install "
          "dataset-fashion-mnist` or pass --data-root DIR with its idx files); using the built-in "
          "procedural shapes set instead, at 28x28 gray.", file=sys.stderr)
    return "shapes", None


def run_demo(out: str = "runs/demo", steps: int | None = None, num_masks: int | None = None,
             data_root: str | None = None, progress: bool = True, eval_n: int = EVAL_N,
             overrides: list[str] | None = None) -> list[dict]:
    """Train both models, evaluate them on the same images, print and save the comparison.

    ``overrides`` (section.key=value) apply to both models, e.g. to shrink them in tests.
    """
    out_dir = Path(out)
    check_writable(out_dir, "--out")  # a file there is one line, not FileExistsError
    out_dir.mkdir(parents=True, exist_ok=True)
    data_name, root = pick_data(data_root)
    rows, models = [], {}
    data = None
    names = demo_models()
    for name in names:
        cfg = demo_config(name, out_dir, steps, num_masks, data_name, root, overrides)
        if data is None:
            data = build_data(cfg)
            print(f"mvq demo: {data[0].describe()}; validation: first {len(data[1])} test images",
                  file=sys.stderr)
        result = train(cfg, progress=progress, desc=f"{name}", data=data, overwrite=True)
        ckpt = result.out_dir / "checkpoint"
        model, _, _ = load_tokenizer(ckpt)
        models[name] = model.eval()
        s, s2 = model.tokens
        m = result.metrics
        settings = EvalSettings(n=eval_n, progress=progress, data_root=root)
        ev = evaluate_checkpoint(ckpt, settings, metrics=("lpips", "rfid"))["metrics"]
        rows.append({
            "model": name, "tokens": f"{s}+{s2}", "tokens_per_image": s + s2,
            "codebook_entries": cfg.model.codebook_size,
            "bits_per_image": round(model.bits_per_image, 2),
            "mask_bits": round(model.mask_bits, 2), "parameters": model.num_parameters,
            "num_masks": cfg.model.num_masks if model_type(name).masks else None,
            "val_mse": round(m["val_mse"], 5), "val_psnr": round(m["val_psnr"], 3),
            "lpips": round(ev["lpips"], 4), "rfid": round(ev["rfid"], 2), "eval_images": eval_n,
            "usage": round(m["val_usage"], 3),
            "usage2": round(m.get("val_usage2", float("nan")), 3),
            "steps": result.step, "train_seconds": round(result.seconds, 1),
            "val_images": len(data[1]), "data": data_name,
            "checkpoint": str(result.out_dir / "checkpoint"),
        })
    images = data[1].stacked(0, 16)[0]
    with torch.no_grad():
        recs = [models[t].reconstruct(images) for t in names]
    grid = comparison_figure(images, recs, rows).save(out_dir / "comparison.png")
    write_text(out_dir / "summary.json", json.dumps(rows, indent=2))
    print(format_table(rows))
    print(f"\ngrid (rows: original, {', '.join(names)}): {grid}\n"
          f"summary: {out_dir / 'summary.json'}")
    return rows


def comparison_figure(images: torch.Tensor, recs: list[torch.Tensor], rows: list[dict]
                      ) -> Figure:
    """The demo's figure: ``images`` (N, C, H, W) over each model's reconstructions (from the
    codes; ``recs[k]`` of the model of summary row ``rows[k]``), each row labelled with the
    model, its tokens and its validation PSNR."""
    labels = ["original"] + [f"{r['model']}\n{r['tokens']} tokens, K={r['codebook_entries']}\n"
                             f"PSNR {r['val_psnr']:.2f} dB" for r in rows]
    return Figure([images, *recs], f"mvq demo: the first {len(images)} test images "
                  "and their reconstructions through the discrete codes", labels)


def format_table(rows: list[dict]) -> str:
    head = ("model", "tokens", "K", "bits/img", "params", "val MSE", "PSNR dB", "LPIPS",
            f"rFID@{rows[0]['eval_images']}", "usage", "usage2", "steps", "time s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        bits = f"{r['bits_per_image']:g}" + (f" ({r['mask_bits']:g} mask)" if r["mask_bits"]
                                             else "")
        cells = (r["model"], r["tokens"], r["codebook_entries"], bits,
                 f"{r['parameters'] / 1e6:.2f} M", f"{r['val_mse']:.4f}",
                 f"{r['val_psnr']:.2f}", f"{r['lpips']:.4f}", f"{r['rfid']:.2f}",
                 f"{r['usage']:.2f}", f"{r['usage2']:.2f}", r["steps"],
                 f"{r['train_seconds']:.0f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
