"""Token files: a whole data set encoded once by a tokenizer, for training priors.

One ``.safetensors`` file holds the `Codes` tensors of every image (``primary`` (N, H, W) int64,
``secondary`` (N, H', W') int64 if two-level, ``mask`` (N, H', W', D') uint8 if MVQ) plus
``labels`` (N,) int64. Its header metadata holds ``mvq_codes`` (the tokenizer's Codes.meta:
model, config_hash, codebook_sizes) and ``mvq_tokens`` (model, config_hash, checkpoint, data
set, split, N), so a prior can refuse tokens made by another tokenizer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mvq.configuration.config import codebook_sizes, config_from_dict, model_hash
from mvq.data import build_dataset
from mvq.errors import MvqError
from mvq.files.jsonio import loads_object
from mvq.files.outputs import check_outputs
from mvq.files.sealed import read_json
from mvq.runtime.devices import pick_device
from mvq.saved.checkpoint import tensors_sha256
from mvq.saved.pretrained import load_tokenizer
from mvq.values.codes import Codes

TOKENS_FORMAT = "mvq-tokens-v1"


@torch.no_grad()
def encode_dataset(checkpoint: str | Path, out_path: str | Path, split: str = "train",
                   limit: int | None = None, batch_size: int = 256, device: str = "auto",
                   progress: bool = True, overwrite: bool = False) -> Path:
    """Encode the checkpoint's data set (``cfg.data``) with its tokenizer into one token file.

    Images are (B, C, S, S) at ``cfg.model.image_size`` / ``cfg.model.channels``; the tokenizer
    runs in eval mode (deterministic codes). Returns the path of the written file. An existing
    file is replaced only with ``overwrite``; a path inside a checkpoint folder is refused.
    """
    out_path = check_outputs([("--out", out_path)], overwrite,
                             [("--checkpoint", checkpoint)])[0]
    if batch_size < 1:
        raise MvqError(f"batch_size must be >= 1, got {batch_size}")
    dev = pick_device(device)
    model, cfg, info = load_tokenizer(checkpoint, device=str(dev))
    model.eval()
    ds = build_dataset(cfg.data.name, root=cfg.data.root, split=split, size=cfg.model.image_size,
                       channels=cfg.model.channels, limit=limit, seed=cfg.train.seed)
    n = len(ds)
    if n == 0:
        raise MvqError(f"the {split} split of {cfg.data.name} is empty: nothing to encode")
    parts: list[Codes] = []
    labels: list[torch.Tensor] = []
    bar = tqdm(total=n, desc=f"encode {split}", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    try:
        for start in range(0, n, batch_size):
            x, y = ds.stacked(start, start + batch_size)
            parts.append(model.encode(x.to(dev)).to("cpu"))
            labels.append(y)
            bar.update(len(x))
    finally:
        bar.close()
    codes = Codes.cat(parts)
    token_meta = {"format": TOKENS_FORMAT, "model": codes.meta.get("model", cfg.model.type),
                  "config_hash": codes.meta.get("config_hash"),
                  "checkpoint": str(Path(checkpoint)), "data": cfg.data.name, "split": split,
                  "n": n, "step": info.get("step"), "num_classes": ds.num_classes,
                  "weights_sha256": tensors_sha256(model)}
    codes.save(out_path, extra={"labels": torch.cat(labels)},
               metadata={"mvq_tokens": json.dumps(token_meta)})
    return out_path


REMAKE = "the file is damaged or not written by mvq; make it again with `mvq encode-dataset`"
MAX_CLASSES = 1 << 16  # a class-conditional prior holds one embedding per class


def _check_labels(labels: torch.Tensor | None, meta: dict, path: Path) -> None:
    """Class labels in [0, num_classes) (the data set's count, recorded by encode_dataset),
    checked once here rather than per batch while a prior trains."""
    if labels is None or not labels.numel():
        return
    declared = meta.get("num_classes")
    if declared is not None and (not isinstance(declared, int) or isinstance(declared, bool)
                                 or not 1 <= declared <= MAX_CLASSES):
        raise MvqError(f"{path}: its metadata declares num_classes {declared!r}, expected an "
                       f"integer in [1, {MAX_CLASSES}]; {REMAKE}")
    top = declared or MAX_CLASSES
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= top:
        raise MvqError(f"{path}: class labels span [{lo}, {hi}], expected [0, {top}) "
                       f"({'the data set' if declared else 'at most'} {top} classes); {REMAKE}")


def _check_sizes(codes: Codes, meta: dict, path: Path) -> None:
    """The codebook sizes the file declares against its tokenizer's config, when the
    checkpoint it names is still there with the same config hash (a file that says 4096 ids
    for a 16-entry tokenizer would size a prior 256 times too large)."""
    declared = codes.meta.get("codebook_sizes")
    ckpt = meta.get("checkpoint")
    source = Path(str(ckpt)) / "config.json" if ckpt else None
    if not declared or source is None or not source.is_file():
        return
    try:
        model = config_from_dict(read_json(source)["config"]).model
    except (MvqError, KeyError, TypeError):
        return  # an unreadable tokenizer is named where it is loaded, not here
    if model_hash(model) == codes.meta.get("config_hash") and declared != codebook_sizes(model):
        raise MvqError(f"{path} declares codebook sizes {declared}, but its tokenizer {ckpt} "
                       f"(same config hash) has {codebook_sizes(model)}; {REMAKE}")


def load_tokens(path: str | Path, expect_hash: str | None = None
                ) -> tuple[Codes, torch.Tensor, dict]:
    """Read a token file: (Codes of N images, labels (N,) int64, token meta dict).

    ``expect_hash``: the config hash of the tokenizer these tokens must come from; a file made
    by another tokenizer raises MvqError.
    """
    path = Path(path)
    if not path.is_file():
        raise MvqError(f"token file not found: {path} (make one with `mvq encode-dataset`)")
    codes, extra, header = Codes.read(path, what="token")
    if "mvq_tokens" not in header:
        raise MvqError(f"{path} is not an mvq token file (no 'mvq_tokens' metadata); make one "
                       "with `mvq encode-dataset`")
    meta = loads_object(header["mvq_tokens"], f"{path}: its 'mvq_tokens' header", REMAKE)
    _check_labels(extra.get("labels"), meta, path)
    _check_sizes(codes, meta, path)
    have = codes.meta.get("config_hash")
    if expect_hash is not None and have != expect_hash:
        raise MvqError(f"token file {path} was made by tokenizer {have}, this tokenizer is "
                       f"{expect_hash}; re-run mvq encode-dataset")
    labels = extra.get("labels")
    if labels is None:
        labels = torch.zeros(len(codes), dtype=torch.int64)
    return codes, labels, meta
