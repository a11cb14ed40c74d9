"""Save and load in one line, the hub convention: ``mvq.load(path)``, ``save_pretrained(folder)``,
``from_pretrained(path_or_repo_id)``.

A saved folder is the same all-or-nothing checkpoint folder training writes (checkpoint.py):
``config.json`` (what it is and the config that rebuilds it), ``model.safetensors``, a model card
``README.md`` and ``manifest.json``. So a training checkpoint (``OUT/checkpoint``, or the run
folder ``OUT``), a folder written by ``save_pretrained`` and one downloaded from a hub repository
all load through `load`, which returns whatever the folder holds (a tokenizer or a prior)
in eval mode on the device asked for.

huggingface_hub's ``ModelHubMixin`` is not used: it would write a second config format beside
the checkpoint one, and loading a local folder (the common case, offline) needs none of it. A
repository id (``owner/name``) is downloaded with huggingface_hub when it is installed
(``pip install mvq[hub]``); local folders never touch the network.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import ClassVar

from mvq.configuration.config import config_from_dict
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.files.outputs import try_lock
from mvq.runtime.devices import pick_device
from mvq.saved import checkpoint

RUN_LOCK = ".lock"  # the lock a training holds on its run folder (mvq.train.engine.locked)
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class Pretrained:
    """Mixin of the loadable models ([`Tokenizer`][mvq.models.base.Tokenizer],
    [`Prior`][mvq.priors.base.Prior]).

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
        return self._save(Path(folder), None)

    def _save(self, folder: Path, card_name: str | None) -> Path:
        """Write ``folder`` (config.json, model.safetensors, README.md model card, manifest),
        all or nothing. An existing mvq model folder there is replaced (kept as
        ``FOLDER-STEP`` until the swap is done); any other existing folder is refused, and so
        are a training run's folder and a folder holding a run's training state (its
        ``--resume`` needs it), and a save while another process writes the same folder (the
        lock ``.FOLDER.lock``) or a training holds the run it lies in (the run's ``.lock``)."""
        info = self._checkpoint_info()
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
                checkpoint.write_model(tmp, self, info, card_name)
        return folder

    def push_to_hub(self, repo_id: str, token: str | None = None,
                    revision: str | None = None) -> str:
        """Upload this model to the hub repository ``repo_id`` (created when missing; branch
        ``revision``, created when missing; default main) as the folder save_pretrained
        writes, its card's load line naming ``repo_id``. Needs huggingface_hub
        (``pip install mvq[hub]``); returns the upload's commit URL."""
        if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
            raise MvqError(f"{str(repo_id)[:80]!r} is not a hub repository id (owner/name)")
        hub = _hub(repo_id)
        with tempfile.TemporaryDirectory(prefix="mvq-push-") as tmp:
            folder = self._save(Path(tmp) / repo_id.split("/")[1], repo_id)
            try:
                api = hub.HfApi(token=token)
                api.create_repo(repo_id, exist_ok=True)
                if revision is not None:
                    api.create_branch(repo_id, branch=revision, exist_ok=True)
                done = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                         revision=revision,
                                         commit_message=f"mvq {self.saved_kind or 'model'} at "
                                         f"step {self._checkpoint_info().get('step', 0)}")
            except Exception as err:  # noqa: BLE001 - offline, no permission, bad token, ...
                raise MvqError(f"cannot upload to {repo_id} ({type(err).__name__}: "
                               f"{str(err)[:200]}); check the id, the token and the network"
                               ) from None
        return str(getattr(done, "commit_url", done))

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, device: str = "cpu",
                        verify: bool | None = None, revision: str | None = None,
                        token: str | None = None):
        """The model saved in a folder (or a run folder holding ``checkpoint/``, or a hub
        repository id), in eval mode on ``device``; MvqError when it holds another kind.
        The options are [`load`][mvq.saved.pretrained.load]'s."""
        model = load(path_or_repo_id, device, verify, revision, token)
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


def resolve(path_or_repo_id: str | Path, revision: str | None = None,
            token: str | None = None) -> Path:
    """The checkpoint folder that ``path_or_repo_id`` names: the folder itself when it holds
    config.json, else its ``checkpoint/`` (a training run's folder), else a hub repository.
    A name that exists here or looks like a local path (`_looks_local`) never goes to
    the network."""
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise MvqError(f"expected a folder path or a hub repository id (owner/name), found "
                       f"{type(path_or_repo_id).__name__}")
    path = Path(path_or_repo_id).expanduser()
    for folder in (path, path / "checkpoint"):
        if (folder / "config.json").is_file():
            if revision is not None or token is not None:
                raise MvqError(f"{path} is a local folder: revision and token are for hub "
                               "repositories only")
            return folder
    if path.exists():
        raise MvqError(f"{path} holds no mvq model: expected config.json and model.safetensors "
                       "(a folder written by save_pretrained, `mvq train` or `mvq train-prior`), "
                       "or a run folder with checkpoint/ inside")
    name = os.fspath(path_or_repo_id)
    if isinstance(path_or_repo_id, Path) or _looks_local(name) or not REPO_ID.fullmatch(name):
        raise MvqError(f"no such folder: {name} (expected a model folder, or a hub repository "
                       "id owner/name)")
    return _download(name, revision, token)


def _looks_local(name: str) -> bool:
    """True for a name that is a local path, never a repository id: it starts with ``.``,
    ``/`` or ``~``, holds more than one separator, or its first part is a folder here (a
    mistyped ``runs/mvqq`` is a missing folder of ``runs``, not a repository)."""
    parts = name.replace(os.sep, "/").split("/")
    return (name.startswith((".", "/", "~", os.sep)) or len(parts) > 2
            or os.path.isdir(parts[0]))


HUB_FILES = ["config.json", "model.safetensors", "manifest.json", checkpoint.CARD]


def _hub(repo_id: str):
    """The huggingface_hub module (the ``hub`` extra); MvqError naming the extra without it."""
    try:
        import huggingface_hub  # optional: only for hub repositories
    except ImportError:
        raise MvqError(f"{repo_id} is not a local folder, and a hub repository needs "
                       "huggingface_hub: `pip install mvq[hub]`") from None
    return huggingface_hub


def _download(repo_id: str, revision: str | None, token: str | None) -> Path:
    """The model files of the hub repository ``repo_id`` (weights, config, manifest, card; no
    training state), downloaded into huggingface_hub's cache."""
    hub = _hub(repo_id)
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, token=token,
                                       allow_patterns=HUB_FILES)
    except Exception as err:  # noqa: BLE001 - offline, unknown repository, no permission, ...
        raise MvqError(f"cannot download {repo_id} ({type(err).__name__}: {str(err)[:200]}); "
                       "check the id and the network, or pass a local folder") from None
    return resolve(folder)


_VERIFY: ContextVar[bool] = ContextVar("mvq_verify", default=True)


@contextmanager
def unverified() -> Iterator[None]:
    """Within the block, `load` with ``verify`` unset loads unverified folders (with a
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
        sealed.verify(folder, needs=("model.safetensors", "config.json"),
                      optional=(checkpoint.TRAIN_STATE,))  # not needed to load (nor downloaded)
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


def load(path_or_repo_id: str | Path, device: str = "cpu", verify: bool | None = None,
         revision: str | None = None, token: str | None = None):
    """Whatever the folder holds — a [`Tokenizer`][mvq.models.base.Tokenizer] or a
    [`Prior`][mvq.priors.base.Prior] — rebuilt from its config, its files checked against the
    manifest (which must list the weights and config.json; the model card is not checked), in
    eval mode on ``device``. ``model.checkpoint_info`` is its config.json. ``verify=False``
    loads a folder that no manifest vouches for (one from before manifests), with a
    [`UnverifiedWarning`][mvq.saved.pretrained.UnverifiedWarning] (None: True, unless inside
    `unverified`). A hub repository id (``owner/name``; never a name that exists here or looks
    like a local path) is downloaded at ``revision`` (a branch, tag or commit; default main)
    with ``token`` (private ones)."""
    verify = _VERIFY.get() if verify is None else bool(verify)
    dev = str(pick_device(device))  # checked before reading: no GPU is no damaged checkpoint
    folder = resolve(path_or_repo_id, revision, token)
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
