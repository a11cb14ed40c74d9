"""Train any registered prior (mvq.priors.registry: "gpt", "maskgit", "pixelcnn") on a token
file, with the shared engine (mvq.train.engine): this file supplies the prior's step,
validation and checkpoint.

Validation is the prior's `nll` over a fixed held-out slice of the token file, per stage, in
nats and bits per token (GPT / PixelCNN: primary and secondary ids; MaskGIT: the masked-token
NLL at a fixed mask, see MaskGITPrior). The checkpoint folder ``out_dir/checkpoint`` holds
config.json (format "mvq-checkpoint-v1", kind "prior": the prior's registry name as
"prior_type" and its constructor arguments as "prior"), model.safetensors,
train_state.safetensors (resume) and manifest.json. One format for every saved model:
`mvq.load` rebuilds whichever it names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from mvq.configuration.config import check_resume
from mvq.errors import MvqError, expect_value
from mvq.files import sealed
from mvq.inference.tokens import load_tokens
from mvq.priors.base import Prior, validate_prior
from mvq.priors.registry import default_kind, prior_class
from mvq.runtime import distributed
from mvq.runtime.devices import pick_device
from mvq.saved import checkpoint
from mvq.train.engine import (
    Schedule,
    StepOutput,
    Trainee,
    fit,
    set_lr,
)
from mvq.train.runs import claim_run
from mvq.values.codes import Codes


def write_prior(directory: Path, prior: Prior, info: dict) -> None:
    """model.safetensors + config.json (`checkpoint.prior_info`: prior type and config) + card
    into ``directory``."""
    checkpoint.write_model(directory, prior,
                           checkpoint.prior_info(prior.kind, prior.config(), info))


@dataclass(frozen=True)
class PriorSchedule:
    """A prior run's training settings, as config.json's "train" stores them (under these
    names); the defaults are a new run's. Fixed for the run's life but ``steps`` and ``lr``
    (PRIOR_MAY_CHANGE), which a resume may change."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    seed: int = 0
    val_fraction: float = 0.05


PRIOR_DEFAULTS = PriorSchedule()
PRIOR_MAY_CHANGE = frozenset({"steps", "lr"})  # on resume; the others are fixed
# each setting's flag of `mvq train-prior`, which names it in the messages of a resume
FLAGS = {f.name: "--" + f.name.replace("_", "-") for f in fields(PriorSchedule)}


@dataclass(frozen=True)
class PriorTraining:
    """How to train a prior (`train_prior`); MvqError for a bad value when it is made.

    ``kind``: a registry name ("gpt", "maskgit", "pixelcnn"); None picks the default for the
    tokens' layout (MaskGIT for multichannel MoVQ codes, the two-stage GPT otherwise).
    ``steps``, ``batch_size``, ``lr``, ``seed``, ``val_fraction`` (`PriorSchedule`'s fields;
    and ``kind``): None is the resumed run's own value, `PriorSchedule`'s default for a new
    run; on resume only steps and lr may change (applied and logged), the others are refused
    with both values.
    ``sizes``: the prior's sizes (GPT: {"primary": {n_layer, n_head, n_embd}, "secondary":
    {...}}, None: MVQ Table 4; MaskGIT: {n_layer, n_head, n_embd}; PixelCNN: {channels,
    n_layers, kernel_size}). ``class_conditional`` conditions it on the token file's labels
    (classes 0..max label). ``val_fraction`` of the token file is held out for the validation
    NLL, computed (and checkpointed) every ``val_every`` steps; ``keep_checkpoints``: how many
    checkpoints the run keeps.
    """

    kind: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    val_fraction: float | None = None
    val_every: int = 250
    log_every: int = 10
    keep_checkpoints: int = 1
    sizes: dict | None = None
    class_conditional: bool = False

    def __post_init__(self) -> None:
        if self.kind is not None:
            prior_class(self.kind)  # an unknown name is refused before any work
        if any(v is not None and v < 1 for v in (self.steps, self.batch_size)) \
                or self.val_every < 1 or self.log_every < 1:
            raise MvqError("steps, batch_size, val_every and log_every must be >= 1")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise MvqError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def train_prior(tokens_path: str | Path, out_dir: str | Path,
                settings: PriorTraining | None = None, progress: bool | str = True,
                device: str = "auto", resume: bool = False, overwrite: bool = False) -> dict:
    """Train a prior on a token file into ``out_dir`` (metrics.csv, checkpoint/), as
    ``settings`` says (None: `PriorTraining`'s defaults).

    A prior that cannot model the tokens' layout is refused before anything is written.
    Returns {"step", "metrics" (final val), "initial" (val at step 0), "checkpoint" (Path),
    "seconds", "finished_before", "kind"}. A run already in ``out_dir`` is continued with
    ``resume`` (exactly, from its last checkpoint), replaced with ``overwrite``, and otherwise
    refused.

    Under ``torchrun --nproc_per_node N`` the N processes train one prior with DDP, each on
    1/N of every batch (batch_size stays the global batch); rank 0 validates, logs and saves.
    """
    st = expect_value(settings, PriorTraining, "settings")
    out = Path(out_dir)
    target = out / "checkpoint"
    resume_from = claim_run(out, "prior", resume, overwrite, "--out")
    own, run_kind, changes = _settings(st, resume_from, out)
    st = replace(st, **asdict(own))  # resolved: no None left among these
    steps, batch_size, seed = own.steps, own.batch_size, own.seed
    codes, labels, tmeta = load_tokens(tokens_path)
    kind = st.kind or run_kind or default_kind(codes)
    prior_class(kind).check_layout(codes)
    num_classes = _num_classes(labels, tokens_path) if st.class_conditional else 0
    n = len(codes)
    n_val = max(1, round(n * own.val_fraction))
    if n - n_val < 1:
        raise MvqError(f"{tokens_path} has {n} items: too few to hold out {n_val} for validation")
    info = {"tokens": {**tmeta, "path": str(tokens_path)}, "num_classes": num_classes,
            "tokenizer_config_hash": codes.meta.get("config_hash"),
            # the exact tokenizer weights (None: a token file from before mvq recorded them)
            "tokenizer_weights_sha256": tmeta.get("weights_sha256"),
            "train": {**asdict(own), "n_train": n - n_val, "n_val": n_val}}
    schedule = Schedule(steps, batch_size, seed, st.log_every, st.val_every,
                        ckpt_every=st.val_every, keep_checkpoints=st.keep_checkpoints,
                        batch_option="--batch-size")

    def run(launch, dev) -> dict:
        torch.manual_seed(seed)  # the prior's initial weights
        model = prior_class(kind).from_codes(codes, num_classes, st.sizes)
        trainee = PriorTrainee(model, codes, labels, n_val, info, st, dev, resume_from)
        trainee.changes = changes
        r = fit(trainee, schedule, out, launch, dev, resume_from, progress)
        return {"step": r.step, "metrics": r.metrics, "initial": r.initial, "kind": kind,
                "checkpoint": target, "seconds": r.seconds, "finished_before": r.finished_before}

    return distributed.run(pick_device(device), batch_size, "--batch-size", run)


def _settings(st: PriorTraining, resume_from: Path | None,
              out: Path) -> tuple[PriorSchedule, str | None, list]:
    """The run's `PriorSchedule`, its prior type and the changes a resume makes (named by
    their flags): ``st``'s settings where given (not None), else the resumed run's own (its
    config.json's "train"), else the defaults. A resume that changes a fixed one is refused."""
    given = {f.name: getattr(st, f.name) for f in fields(PriorSchedule)}
    if resume_from is None:
        return replace(PRIOR_DEFAULTS, **{k: v for k, v in given.items() if v is not None}), \
            None, []
    info = sealed.read_json(resume_from / "config.json")
    stored = info.get("train") if isinstance(info.get("train"), dict) else {}
    run = {k: stored.get(k, getattr(PRIOR_DEFAULTS, k)) for k in given}
    new = {k: run[k] if v is None else v for k, v in given.items()}
    changes = [(FLAGS[k], run[k], new[k]) for k in given if new[k] != run[k]]
    check_resume(changes, {FLAGS[k] for k in PRIOR_MAY_CHANGE}, str(out), "start a new run "
                 "(--overwrite, or another --out)")
    return PriorSchedule(**new), info.get("prior_type"), changes


def _num_classes(labels: torch.Tensor, path) -> int:
    """Classes of a class-conditional prior: 0..max label; MvqError when there is one class."""
    k = int(labels.max()) + 1 if len(labels) else 0
    if k < 2:
        raise MvqError(f"{path} holds labels of {k} class(es): a class-conditional prior needs "
                       "at least two; drop --class-conditional")
    return k


class PriorTrainee(Trainee):
    """A prior on a token file for the engine: items are codes (with their labels), a seeded
    slice of them is held out for the validation NLL."""

    what = "prior training"
    lower_lr = "lower --lr"
    validate_first = True

    def __init__(self, model: Prior, codes: Codes, labels: torch.Tensor, n_val: int,
                 info: dict, settings: PriorTraining, device: torch.device,
                 resume_from: Path | None) -> None:
        super().__init__([*model.stages, "val_nll"] + [f"val_{s}_{u}" for u in ("nll", "bits")
                                                        for s in model.stages])
        seed, lr = settings.seed, settings.lr  # resolved by train_prior
        self.info, self.device, self.lr = info, device, lr
        self.name = f"prior {model.kind}"
        perm = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))
        self.val_codes = codes[perm[:n_val]].to(device)
        self.train_codes = codes[perm[n_val:]].to(device)
        conditional = bool(model.num_classes)
        self.val_labels = labels[perm[:n_val]].to(device) if conditional else None
        self.train_labels = labels[perm[n_val:]].to(device) if conditional else None
        self.size = len(self.train_codes)
        self.model = model.to(device)
        self.initial: dict[str, float] = {}
        if resume_from is not None:
            saved = Prior.from_pretrained(resume_from, device=str(device))
            saved_info = saved.checkpoint_info
            if saved.kind != model.kind or saved.config() != self.model.config():
                raise MvqError(f"cannot resume {resume_from}: it holds a {saved.kind} prior of "
                               f"other sizes, codes or classes than this {model.kind} prior; "
                               "resume with the same token file, --type, sizes and "
                               "--class-conditional")
            self.model.load_state_dict(saved.state_dict())
            self.initial = dict(saved_info.get("initial_metrics") or {})
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def restored(self) -> None:
        set_lr(self.optimizer, self.lr)  # may change on resume (PRIOR_MAY_CHANGE)

    def step(self, step: int, indices: torch.Tensor) -> StepOutput:
        """One step on the items ``indices`` (the engine's default batches)."""
        idx = indices.to(self.device)
        labels = None if self.train_labels is None else self.train_labels[idx]
        loss, parts = self.net(self.train_codes[idx], labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return StepOutput(loss, {k: v.detach() for k, v in parts.items()})

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        metrics = validate_prior(self.model, self.val_codes, labels=self.val_labels)
        if step == 0:
            self.initial = metrics
        return metrics

    def write(self, directory: Path, step: int, metrics: dict[str, float]) -> None:
        write_prior(directory, self.model, {**self.info, "step": step, "metrics": metrics,
                                            "initial_metrics": self.initial,
                                            "threads": torch.get_num_threads()})
