"""Where the scorer's weights come from: decided on the driver before Ray starts, fetched once per node.

``--model`` is one of
- a local directory (it must hold a ``config.json``);
- an object-storage prefix (``s3://bucket/models/q-eval-score/``): the driver lists it (its content
  fingerprint pins the revision), each node copies it once into its cache;
- a Hugging Face id, with ``--revision`` to pin a branch, tag or commit: the driver resolves the
  commit (from the hub, or from the local cache when ``HF_HUB_OFFLINE`` is set or the hub cannot be
  reached), each node downloads that commit once into its Hugging Face cache.

The driver's check fails within seconds with one line (:class:`ModelUnavailable`) when the files
cannot be had, so an air-gapped cluster does not start actors that would retry the hub file by file.
On a node, one process downloads while the others wait on a file lock, then every engine loads from
the node's local copy (a path, never the hub id), so actors never download anything themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from qeval_ray import storage
from qeval_ray.config import ConfigError, looks_local, strip_file
from qeval_ray.storage import StorageOptions

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 10.0  # the driver's one request to the hub


class ModelUnavailable(ConfigError):
    """The scorer's files cannot be had from where --model points; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """The model as the driver resolved it: what each node needs to get a local copy."""

    kind: str  # "local", "storage" (object storage) or "hub"
    uri: str  # the directory, the storage prefix or the hub id
    revision: str  # what pins the weights: local-sha256:..., remote-sha256:... or the hub commit
    fingerprint: str | None = None  # storage: the content fingerprint (names the node's copy)
    cache_only: bool = False  # hub: take the commit from the node's cache, never from the network


def resolve_model(model: str, revision: str | None, options: StorageOptions = storage.DEFAULT,
                  timeout: float = HUB_TIMEOUT_S) -> ModelSource:
    """Check on the driver that the model's files can be had; one :class:`ModelUnavailable` line if not."""
    if looks_local(model):
        path = strip_file(model)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelUnavailable(f"--model {model}: no config.json there (not a model directory)")
        return ModelSource("local", path, "local-sha256:" + storage.fingerprint(path))
    if "://" in model:
        try:
            fingerprint, names = storage.fingerprint_files(model, options)
        except Exception as e:  # noqa: BLE001 - storage libraries raise many types: one line says which problem
            if not (storage.storage_problem(e, model) or isinstance(e, OSError)):
                raise
            raise ModelUnavailable(f"--model {storage.redact(model)}: {storage.describe_error(e, model)}") from e
        if "config.json" not in names:
            raise ModelUnavailable(f"--model {storage.redact(model)}: no config.json there (not a model directory)")
        return ModelSource("storage", model, "remote-sha256:" + fingerprint, fingerprint=fingerprint)
    return _resolve_hub(model, revision, timeout)


def _resolve_hub(model: str, revision: str | None, timeout: float) -> ModelSource:
    from huggingface_hub import HfApi, constants, errors

    asked = f"--model {model}" + (f" --revision {revision}" if revision else "")
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(model)
    except errors.HFValidationError as e:
        raise ModelUnavailable(f"--model {model}: no such directory, and not a Hugging Face id (ORG/NAME)") from e
    get_it = (f"download it first (hf download {model}" + (f" --revision {revision}" if revision else "") +
              ") or pass a local directory or an object-storage prefix")
    if constants.HF_HUB_OFFLINE:
        commit = _cached_commit(model, revision)
        if commit is None:
            raise ModelUnavailable(f"{asked}: HF_HUB_OFFLINE is set and it is not in the local cache "
                                   f"({constants.HF_HUB_CACHE}): {get_it}")
        return ModelSource("hub", model, commit, cache_only=True)
    try:
        info = HfApi().model_info(model, revision=revision, timeout=timeout)
    except errors.RevisionNotFoundError as e:
        raise ModelUnavailable(f"{asked}: the hub has no such revision") from e
    except errors.GatedRepoError as e:
        raise ModelUnavailable(f"{asked}: gated on the hub; accept its terms and set HF_TOKEN") from e
    except errors.RepositoryNotFoundError as e:
        raise ModelUnavailable(f"{asked}: no such model on the hub (or it is private: set HF_TOKEN)") from e
    except Exception as e:  # noqa: BLE001 - no network, DNS, proxy, TLS, 5xx: the hub cannot be asked
        commit = _cached_commit(model, revision)
        if commit is None:
            raise ModelUnavailable(f"{asked}: cannot reach the Hugging Face hub at {constants.ENDPOINT} "
                                   f"({_first_line(e)}) and it is not in the local cache "
                                   f"({constants.HF_HUB_CACHE}): {get_it}") from e
        return ModelSource("hub", model, commit, cache_only=True)  # as huggingface_hub itself falls back
    return ModelSource("hub", model, info.sha or revision or "unresolved")


def _cached_commit(model: str, revision: str | None) -> str | None:
    """The commit of a complete snapshot of ``model`` in this machine's Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or an invalid id
        return None
    return os.path.basename(path) if os.path.isfile(os.path.join(path, "config.json")) else None


def _first_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- on a node ------------------------------------------------------------------------------------


def local_path(source: ModelSource, options: StorageOptions = storage.DEFAULT) -> str:
    """The directory an engine loads from on this node: copied or downloaded once per node (the
    first process to get the node's lock fetches, the others wait and find it there)."""
    if source.kind == "local":
        return source.uri
    if source.kind == "storage":
        return storage.localize_dir(source.uri, options, known_fingerprint=source.fingerprint)
    return _hub_snapshot(source)


def _hub_snapshot(source: ModelSource) -> str:
    from huggingface_hub import constants, snapshot_download

    if source.cache_only:
        try:
            return snapshot_download(source.uri, revision=source.revision, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - this node's cache lacks what the driver's had
            raise ModelUnavailable(f"--model {source.uri}: commit {source.revision} is not in this node's "
                                   f"Hugging Face cache ({constants.HF_HUB_CACHE}); every node needs it "
                                   "(a shared cache volume, or the image) when the hub cannot be reached") from e
    locks = os.path.join(constants.HF_HUB_CACHE, ".locks", "qeval-ray")
    name = f"models--{source.uri.replace('/', '--')}--{source.revision}"
    with storage.node_lock(os.path.join(locks, name + ".lock")):
        done = os.path.join(locks, name + ".complete")
        if os.path.exists(done):
            with contextlib.suppress(Exception):
                path = snapshot_download(source.uri, revision=source.revision, local_files_only=True)
                log.info("%s@%s is in this node's cache: %s", source.uri, source.revision, path)
                return path
        path = snapshot_download(source.uri, revision=source.revision)
        open(done, "w").close()
        log.info("downloaded %s@%s to this node's cache: %s", source.uri, source.revision, path)
        return path
