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

from vlmnb.core.errors import OneLineError
from vlmnb.engine import families
from vlmnb.toy import checkpoint_path


class ModelNotAvailable(OneLineError, FileNotFoundError):
    """A model that is neither a local folder nor in the local Hugging Face cache, while offline."""


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
        raise ValueError(f"{config.model_type!r} needs the checkpoint's own code; load it with "
                         "vlmnb.load(..., trust_remote_code=True) if you trust that repository")
    raise ValueError(f"model type {config.model_type!r} is not an image-text-to-text model transformers knows")


def load_pretrained(name_or_path: str | os.PathLike, *, dtype=None, device_map=None, trust_remote_code: bool = False,
                    **kwargs) -> Loaded:
    """Load a vision-language model and its processor (see :func:`vlmnb.engine.vlm.load`).

    Args:
        name_or_path: ``"toy"`` / ``"toy-yesno"`` (the embedded models), a local
            ``save_pretrained`` folder, or a Hugging Face hub id. Hub ids are read from the
            local cache first; when the hub is unreachable (or ``HF_HUB_OFFLINE=1``) only the
            cache is used and a missing model raises :class:`ModelNotAvailable`.
        dtype: torch dtype; default float32 on CPU and the checkpoint's own dtype on GPU.
        device_map: passed to accelerate (e.g. ``"auto"`` with ``max_memory=...`` to shard a
            large model over GPUs); default ``"auto"`` when CUDA is available, else CPU.
        trust_remote_code: run the checkpoint's own modelling code (off unless you ask).
        **kwargs: passed to ``from_pretrained`` of the model (e.g. ``max_memory``, ``revision``).
    """
    import torch
    from transformers import AutoConfig, AutoProcessor

    name = str(name_or_path)
    if name in ("toy", "toy-yesno"):
        source = str(checkpoint_path(name))
        local = True
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model folder (no config.json); "
                                    "pass a folder written by save_pretrained or a hub id")
        source, local = str(path), True
    else:
        source, local = name, False

    local_only = local
    if not local:
        try:
            AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
            local_only = True
        except (OSError, ValueError):
            if hub_offline():
                raise ModelNotAvailable(
                    f"{name!r} is not in the local cache and the hub is unreachable; download it first "
                    f"with `huggingface-cli download {name}` on a machine with network access") from None
            local_only = False

    config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code)
    try:
        family = families.detect(config).name
    except ValueError as exc:
        raise ValueError(f"{name!r}: {exc}. Remote-code checkpoints (e.g. OpenGVLab/InternVL2-*) bypass "
                         "transformers' attention interface; use their transformers-native '-hf' "
                         "conversion instead") from None
    cuda = torch.cuda.is_available()
    if device_map is None and cuda:
        device_map = "auto"
    if dtype is None:
        dtype = "auto" if (cuda or device_map is not None) else torch.float32
    model_cls = model_class(config, trust_remote_code)
    common = dict(local_files_only=local_only, trust_remote_code=trust_remote_code)
    try:
        model = model_cls.from_pretrained(source, dtype=dtype, device_map=device_map, **common, **kwargs)
        processor = AutoProcessor.from_pretrained(source, **common)
    except OSError as exc:
        if local_only and not local and hub_offline():
            raise ModelNotAvailable(f"{name!r} is only partly in the local cache and the hub is unreachable "
                                    f"({exc}); download it completely first") from None
        raise
    return Loaded(model, processor, name=name, family=family, revision=weights_revision(source, config))


def weights_revision(source: str, config=None) -> str:
    """A short identifier of the weights behind ``source``: the hub commit when transformers
    recorded one, else a digest of the folder's weight files (their bytes when small, their
    names, sizes and first and last MiB when large)."""
    import hashlib

    commit = getattr(config, "_commit_hash", None) if config is not None else None
    if commit:
        return str(commit)[:12]
    digest = hashlib.sha256()
    folder = Path(source)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
    if not files:
        return "unknown"
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
