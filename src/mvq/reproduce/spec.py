"""What a plan is made of: typed changes to a preset's Config, the runs (a tokenizer each, with
the priors trained on its tokens), and where a run stands on disk.

A run's name is its folder (``OUT/runs/NAME``): it is built from what the run is, so two
experiments that need the same model share one folder and an interrupted run resumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType

from mvq.configuration.config import Config, check_section, load_config
from mvq.errors import MvqError
from mvq.values.decoding import Decoding

SECTIONS = ("model", "data", "train", "loss")


def _frozen(values: Mapping | None) -> Mapping:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class Changes:
    """Field changes to a loaded preset, by section: ``Changes(model={"factor": 14})`` sets
    ``cfg.model.factor``. The keys are the section dataclass's fields (checked when applied);
    the values are checked and coerced as a loaded config's are."""

    model: Mapping[str, object] = field(default_factory=dict)
    data: Mapping[str, object] = field(default_factory=dict)
    train: Mapping[str, object] = field(default_factory=dict)
    loss: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SECTIONS:
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    def __add__(self, other: Changes) -> Changes:
        """Both changes; ``other``'s value wins where both set a field."""
        return Changes(**{name: {**getattr(self, name), **getattr(other, name)}
                          for name in SECTIONS})

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with these fields replaced (``dataclasses.replace``), each changed section
        checked as a loaded one is; MvqError naming an unknown field."""
        sections = {}
        for name in SECTIONS:
            section, values = getattr(cfg, name), dict(getattr(self, name))
            known = {f.name for f in fields(section)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise MvqError(f"{name}.{unknown[0]} is not a field of {type(section).__name__}; "
                               f"expected one of {', '.join(sorted(known))}")
            sections[name] = check_section(replace(section, **values), name) if values \
                else section
        return Config(**sections)


@dataclass(frozen=True)
class Decode:
    """One sample evaluation of a prior: the decoding (its seed is the prior's, set by the
    runner) and the label of its report row ("" = the prior's defaults, no decoding label)."""

    label: str = ""
    decoding: Decoding = field(default_factory=Decoding)

    @property
    def slug(self) -> str:
        """The label as a file-name part ("default" for none)."""
        return slug(self.label) or "default"


@dataclass(frozen=True)
class PriorSpec:
    """A prior trained on a run's training-split tokens, then sampled once per decoding.

    ``decodes``: each one sample evaluation (MaskGIT at 4, 8, ... steps); ``sizes``: the
    prior's sizes (None = its default); ``label`` names the prior in the report's rows; ``tag``
    names a variant in its folder (in place of "-sized": two variants of one kind need two
    folders).
    """

    kind: str
    steps: int
    seed: int = 0
    label: str = ""
    class_conditional: bool = False
    sizes: Mapping | None = None
    decodes: tuple[Decode, ...] = field(default_factory=lambda: (Decode(),))
    tag: str = ""

    @property
    def folder(self) -> str:
        variant = f"-{self.tag}" if self.tag else "-sized" if self.sizes else ""
        return (f"{self.kind}{'-cond' if self.class_conditional else ''}"
                f"{variant}_{self.steps}steps_s{self.seed}")


@dataclass(frozen=True)
class Run:
    """One training run: a preset and the changes the plan makes to it, with the labels the
    report groups by.

    ``labels`` name the cell of the result table ("model", "F", "J", ...); ``seed`` is the
    repetition within the cell. ``priors`` are trained on the run's tokens and their samples
    evaluated (MVQ Table 5 and the generation experiments).
    """

    name: str
    preset: str
    changes: Changes
    labels: Mapping[str, object]
    seed: int
    priors: tuple[PriorSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen(self.labels))

    def config(self, data_root: str | None, out_dir: Path | str) -> Config:
        """The preset with the plan's changes, this run's seed and folder (and the user's data
        folder)."""
        own = Changes(train={"seed": self.seed, "out_dir": str(out_dir)},
                      data={"root": data_root} if data_root else {})
        return (self.changes + own).apply(load_config(self.preset))


@dataclass(frozen=True)
class PriorSample:
    """One sample evaluation of one of a run's priors and the JSON file that holds it."""

    spec: PriorSpec
    decode: Decode
    path: Path  # RUN/priors/FOLDER/samples_SLUG.json

    @property
    def first(self) -> bool:
        """The prior's first decoding (the one that trains the prior)."""
        return self.decode == self.spec.decodes[0]


def prior_samples(run: Run, out_dir: Path) -> list[PriorSample]:
    """Every sample evaluation of ``run.priors``, in plan order."""
    return [PriorSample(spec, d, out_dir / "priors" / spec.folder / f"samples_{d.slug}.json")
            for spec in run.priors for d in spec.decodes]


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


@dataclass
class RunState:
    """Where one run stands on disk."""

    run: Run
    out_dir: Path
    step: int  # the checkpoint's step, 0 when none
    steps: int  # planned
    evaluated: bool
    sampled: bool
    kept: bool = False  # out_dir is a kept run's records (mvq.reproduce.kept), not a run folder
    note: str = ""  # why a kept copy of the run was not counted, for the plan's listing
    # a kept copy that is not done (not counted: no weights to go on from), whose rows a
    # report may still show: evaluated but not sampled (a kind with ROWS_BEFORE_PRIORS), or
    # evaluated at earlier lengths (a kind with lengths)
    kept_copy: RunState | None = None
    # the stops whose evaluations are the run's rows, for a run trained part way (None: all of
    # the kind's stops)
    rows_at: tuple[int, ...] | None = None

    @property
    def status(self) -> str:
        if self.step >= self.steps and self.evaluated and self.sampled:
            return "done"
        if self.step >= self.steps:
            return "to sample" if self.evaluated else "to evaluate"
        return f"resume at {self.step}" if self.step else "to train"

    @property
    def samples(self) -> list[PriorSample]:
        return prior_samples(self.run, self.out_dir)

    def eval_path(self, step: int) -> Path:
        """The evaluation of the run's checkpoint at ``step``: ``eval.json`` at its last step,
        ``eval_<step>steps.json`` at an earlier one (the training-length study's)."""
        return eval_path(self.out_dir, step, self.steps)


def eval_path(folder: Path, step: int, steps: int) -> Path:
    """``folder/eval.json`` for the last step ``steps``, else ``folder/eval_<step>steps.json``."""
    return folder / ("eval.json" if step == steps else f"eval_{step}steps.json")
