"""Save and load in one line, the hub convention: ``mvq.load(path)``, ``save_pretrained(folder)``,
``from_pretrained(path_or_repo_id)``.

A saved folder is the same all-or-nothing checkpoint folder training writes (checkpoint.py):
``config.json`` (what it is and the config that rebuilds it), ``model.safetensors``, a model card
``README.md`` and ``manifest.json``. So a training checkpoint (``OUT/checkpoint``, or the run
folder ``OUT``), a folder written by ``save_pretrained`` and one downloaded from a hub repository
all load through :func:`load`, which returns whatever the folder holds (a tokenizer or a prior)
in eval mode on the device asked for.

huggingface_hub's ``ModelHubMixin`` is not used: it would write a second config format beside
the checkpoint one, and loading a local folder (the common case, offline) needs none of it. A
repository id (``owner/name``) is downloaded with huggingface_hub when it is installed
(``pip install mvq[hub]``); local folders never touch the network.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import ClassVar

from mvq import checkpoint, sealed
from mvq.config import config_from_dict
from mvq.devices import pick_device
from mvq.errors import MvqError
from mvq.outputs import try_lock

RUN_LOCK = ".lock"  # the lock a training holds on its run folder (mvq.train.engine.locked)
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class Pretrained:
    """Mixin of the loadable models (:class:`~mvq.models.Tokenizer`, :class:`~mvq.priors.Prior`).

    A subclass that is a base of one kind sets ``saved_kind`` (the ``kind`` in config.json) and
    implements ``_from_checkpoint`` and ``_checkpoint_info``.
    """

    saved_kind: ClassVar[str] = ""
    _loaders: ClassVar[dict[str, type]] = {}
    #: the config.json of the folder this model was loaded from (None: built in Python)
    checkpoint_info: dict | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("saved_kind"):
            Pretrained._loaders[cls.saved_kind] = cls

    # --------------------------------------------------------------- hooks
    @classmethod
    def _from_checkpoint(cls, folder: Path, info: dict, device: str):
        raise NotImplementedError

    def _checkpoint_info(self) -> dict:
        """config.json's content for this model (format, kind, the config that rebuilds it)."""
        raise NotImplementedError

    # --------------------------------------------------------------- API
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``folder`` (config.json, model.safetensors, README.md model card, manifest),
        all or nothing. An existing mvq model folder there is replaced (kept as
        ``FOLDER-STEP`` until the swap is done); any other existing folder is refused, and so
        are a training run's folder and a folder holding a run's training state (its
        ``--resume`` needs it), and a save while another process writes the same folder (the
        lock ``.FOLDER.lock``) or a training holds the run it lies in (the run's ``.lock``)."""
        info = self._checkpoint_info()
        folder = Path(folder)
        with ExitStack() as locks:
            run_lock = folder.parent / RUN_LOCK
            if run_lock.is_file() and not run_lock.is_symlink():  # inside a run's folder
                holder = locks.enter_context(try_lock(run_lock))
                if holder is not None:
                    raise MvqError(f"{folder.parent} is in use by an mvq training (pid "
                                   f"{holder}); wait for it to finish or save to a folder "
                                   "outside that run")
            holder = locks.enter_context(try_lock(folder.parent / f".{folder.name}.lock"))
            if holder is not None:
                raise MvqError(f"{folder} is being written by another process (pid {holder}); "
                               "wait for it to finish or save to another folder")
            _refuse_training_state(folder)
            if (folder / "config.json").is_file():  # replace only a model of the same kind
                held = sealed.read_json(folder / "config.json").get("kind")
                if held != info["kind"]:
                    raise MvqError(f"{folder} holds a {held or 'non-mvq'} model, not a "
                                   f"{info['kind']}; save to another folder or delete that one")
            with sealed.writing(folder, int(info.get("step", 0))) as tmp:
                checkpoint.write_model(tmp, self, info)
        return folder

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, device: str = "cpu"):
        """The model saved in a folder (or a run folder holding ``checkpoint/``, or a hub
        repository id), in eval mode on ``device``; MvqError when it holds another kind."""
        model = load(path_or_repo_id, device)
        if not isinstance(model, cls):
            raise MvqError(f"{path_or_repo_id} holds a {type(model).__name__}, not a "
                           f"{cls.__name__}; load it with mvq.load()")
        return model


def _refuse_training_state(folder: Path) -> None:
    """MvqError when saving into ``folder`` would take a training run's files: the run's
    own folder (it holds ``.lock``), or a checkpoint holding the training state that
    ``--resume`` reads (replacing it would retire and delete that state)."""
    if (folder / RUN_LOCK).exists() or (folder / "checkpoint").is_dir():
        raise MvqError(f"{folder} is a training run's folder (mvq train writes it); save to a "
                       "new folder instead, e.g. " + str(folder.with_name(folder.name + "-saved")))
    for held in (folder, *sealed.retired(folder)):  # a retired copy would be deleted too
        state = held / checkpoint.TRAIN_STATE
        if state.exists() or state.is_symlink():
            raise MvqError(f"{held} holds a run's training state ({checkpoint.TRAIN_STATE}, "
                           f"which --resume reads); saving into {folder} would delete it: save "
                           "to a new folder instead")


def resolve(path_or_repo_id: str | Path) -> Path:
    """The checkpoint folder that ``path_or_repo_id`` names: the folder itself when it holds
    config.json, else its ``checkpoint/`` (a training run's folder), else a hub repository."""
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise MvqError(f"expected a folder path or a hub repository id (owner/name), found "
                       f"{type(path_or_repo_id).__name__}")
    path = Path(path_or_repo_id)
    for folder in (path, path / "checkpoint"):
        if (folder / "config.json").is_file():
            return folder
    if path.exists():
        raise MvqError(f"{path} holds no mvq model: expected config.json and model.safetensors "
                       "(a folder written by save_pretrained, `mvq train` or `mvq train-prior`), "
                       "or a run folder with checkpoint/ inside")
    if not REPO_ID.fullmatch(str(path_or_repo_id)):
        raise MvqError(f"{path} not found: expected a model folder or a hub repository id "
                       "(owner/name)")
    return _download(str(path_or_repo_id))


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download  # optional: only for repository ids
    except ImportError:
        raise MvqError(f"{repo_id} is not a local folder, and downloading a hub repository "
                       "needs huggingface_hub: `pip install mvq[hub]`") from None
    try:
        return resolve(snapshot_download(repo_id))
    except MvqError:
        raise
    except Exception as err:  # noqa: BLE001 - offline, unknown repository, no permission, ...
        raise MvqError(f"cannot download {repo_id} ({type(err).__name__}: {err}); check the "
                       "id and the network, or pass a local folder") from None


_VERIFY: ContextVar[bool] = ContextVar("mvq_verify", default=True)


@contextmanager
def unverified() -> Iterator[None]:
    """Within the block, :func:`load` with ``verify`` unset loads unverified folders (with a
    warning): ``mvq --no-verify COMMAND``."""
    token = _VERIFY.set(False)
    try:
        yield
    finally:
        _VERIFY.reset(token)


def _verify(folder: Path, verify: bool) -> None:
    """Check ``folder`` against its manifest, which must list the weights and config.json;
    ``verify`` False: a folder no manifest vouches for loads with a warning."""
    try:
        sealed.verify(folder, needs=("model.safetensors", "config.json"))
    except sealed.Unverified as err:
        if verify:
            raise MvqError(f"{err}; load it only if you trust where it came from: "
                           "mvq.load(path, verify=False), or mvq --no-verify COMMAND") from None
        warnings.warn(f"loading {folder} unverified: {err}", UnverifiedWarning, stacklevel=3)


class UnverifiedWarning(UserWarning):
    """A model folder loaded with ``verify=False`` that no manifest vouches for."""


def _check_info(folder: Path, info: dict, kind: str) -> None:
    """MvqError when config.json contradicts itself: a tokenizer's top-level ``model_type``
    (what the commands check and report) is not the type its config builds."""
    if kind != "tokenizer" or "model_type" not in info:
        return
    model = info.get("config", {}).get("model") if isinstance(info.get("config"), dict) else None
    built = model.get("type") if isinstance(model, dict) else None
    if info["model_type"] != built:
        raise MvqError(f"{folder / 'config.json'} is damaged: model_type "
                       f"{str(info['model_type'])[:40]!r} but its config builds "
                       f"{str(built)[:40]!r}; use an earlier checkpoint or train again")


def load(path_or_repo_id: str | Path, device: str = "cpu", verify: bool | None = None):
    """Whatever the folder holds — a :class:`~mvq.models.Tokenizer` or a
    :class:`~mvq.priors.Prior` — rebuilt from its config, its files checked against the
    manifest (which must list the weights and config.json; the model card is not checked), in
    eval mode on ``device``. ``model.checkpoint_info`` is its config.json. ``verify=False``
    loads a folder that no manifest vouches for (one from before manifests), with a
    :class:`UnverifiedWarning` (None: True, unless inside :func:`unverified`)."""
    verify = _VERIFY.get() if verify is None else bool(verify)
    dev = str(pick_device(device))  # checked before reading: no GPU is no damaged checkpoint
    folder = resolve(path_or_repo_id)
    info = sealed.read_json(folder / "config.json")
    kind = checkpoint.kind_of(info)
    if kind not in Pretrained._loaders:
        raise MvqError(f"{folder / 'config.json'} holds format {info.get('format')!r:.80} and "
                       f"kind {info.get('kind')!r:.40}: expected format {checkpoint.FORMAT!r} "
                       f"with kind {' or '.join(sorted(Pretrained._loaders))} (a folder "
                       "written by mvq)")
    if not (folder / "model.safetensors").is_file():
        raise MvqError(f"{folder} is not a complete mvq model: model.safetensors is missing")
    _verify(folder, verify)
    _check_info(folder, info, kind)
    model = Pretrained._loaders[kind]._from_checkpoint(folder, info, dev)
    model.checkpoint_info = info
    return model.to(dev).eval()


def load_tokenizer(path: str | Path, expect_type: str | None = None, device: str = "cpu",
                   verify: bool | None = None):
    """(tokenizer in eval mode, its full Config, its config.json) — for the commands that need
    the training config too; ``expect_type`` refuses another model type."""
    model = load(path, device, verify)
    if model.checkpoint_info.get("kind") != "tokenizer":
        raise MvqError(f"{path} holds a {type(model).__name__}, not a tokenizer")
    info = model.checkpoint_info
    if expect_type is not None and info.get("model_type") != expect_type:
        raise MvqError(f"{path} holds a {str(info.get('model_type'))[:40]} checkpoint, "
                       f"expected {expect_type}")
    return model, config_from_dict(info["config"]), info


def load_prior(path: str | Path, device: str = "cpu", verify: bool | None = None):
    """(prior in eval mode, its config.json) — for the commands that need its training record."""
    model = load(path, device, verify)
    if model.checkpoint_info.get("kind") != "prior":
        raise MvqError(f"{path} holds a {type(model).__name__}, not a Prior")
    return model, model.checkpoint_info
