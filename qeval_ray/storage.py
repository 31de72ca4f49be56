"""uri -> filesystem. The only module that knows about local paths, file://, s3://, gs://, ...

Everything goes through fsspec, so any installed protocol works (s3fs for s3://, gcsfs for gs://);
Ray Data gets the same filesystems wrapped for pyarrow. Credentials come from the standard places
(AWS environment variables, shared config/credentials files, instance roles, ...): nothing here
takes or stores a secret, and :func:`redact` strips any that a uri carries before it is shown.

Media fetches make one attempt per call at the library level and retry transient errors here, with
exponential backoff and a bound, so every retry is counted and reported; a missing object or a
denied one fails at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import posixpath
import random
import re
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

import fsspec
import pyarrow.fs as pafs

log = logging.getLogger(__name__)

LOCAL_PROTOCOLS = ("file", "local")
DEFAULT_MAX_BYTES = 2 * 1024**3  # media objects larger than this are refused before they are read
# Errors that retrying cannot fix.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_PERMANENT_ERRNOS = {errno.EINVAL, errno.ENAMETOOLONG, errno.EMSGSIZE, errno.ENOENT, errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class StorageOptions:
    s3_endpoint: str | None = None  # else AWS_ENDPOINT_URL or the AWS config decide
    attempts: int = 5  # media fetches: tries per object on transient errors
    backoff_s: float = 0.25  # first wait; doubles each retry, with jitter
    max_backoff_s: float = 8.0

    def fsspec_kwargs(self, protocol: str, single_attempt: bool = False) -> dict:
        if protocol not in ("s3", "s3a"):
            return {}
        kwargs: dict = {}
        if self.s3_endpoint:
            kwargs["endpoint_url"] = self.s3_endpoint
        if single_attempt:  # botocore's own retries off: ours count every one
            kwargs["config_kwargs"] = {"retries": {"total_max_attempts": 1, "mode": "standard"}}
        return kwargs


DEFAULT = StorageOptions()


class StorageError(Exception):
    """A uri could not be read; the message says why, ``retries`` how many transient errors came first."""

    def __init__(self, message: str, retries: int = 0):
        super().__init__(message)
        self.retries = retries


def protocol(uri: str) -> str:
    scheme = urlparse(uri).scheme
    return scheme if len(scheme) > 1 else "file"  # a bare path (or a Windows drive letter)


def is_local(uri: str) -> bool:
    return protocol(uri) in LOCAL_PROTOCOLS


def redact(text: str) -> str:
    """A uri (or an endpoint) without any user:password it carries."""
    parsed = urlparse(text)
    if parsed.username is None and parsed.password is None:
        return text
    host = parsed.hostname or ""
    if parsed.port:
        host += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=f"***@{host}"))


def filesystem(uri: str, options: StorageOptions = DEFAULT, single_attempt: bool = False):
    """The fsspec filesystem for ``uri`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri, **options.fsspec_kwargs(protocol(uri), single_attempt))
    if single_attempt and hasattr(fs, "retries"):
        fs.retries = 1  # s3fs's own retry loop; this instance is ours alone (its options differ)
    return fs, path


def arrow_filesystem(uri: str, options: StorageOptions = DEFAULT, atomic_writes: bool = False):
    """A pyarrow filesystem for ``uri`` (what Ray Data's readers and writers take) and the path.

    With ``atomic_writes``, a local file is written under a hidden temporary name and renamed
    into place when complete, so no reader sees half a file and a crash leaves nothing a reader
    would pick up. Object stores need no help: an object appears only when its upload completes.
    """
    fs, path = filesystem(uri, options)
    if is_local(uri):
        handler = _AtomicLocalHandler(fs) if atomic_writes else None
        return (pafs.PyFileSystem(handler) if handler else pafs.LocalFileSystem()), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


class _AtomicLocalHandler(pafs.FSSpecHandler):
    def open_output_stream(self, path, metadata):
        import pyarrow as pa

        directory, name = posixpath.split(path)
        temporary = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        return pa.PythonFile(_RenameOnClose(self.fs, temporary, path), mode="w")


class _RenameOnClose:
    """A binary file written under ``temporary`` and renamed to ``final`` when closed."""

    def __init__(self, fs, temporary: str, final: str):
        self.fs, self.temporary, self.final = fs, temporary, final
        self.file = fs.open(temporary, "wb")

    def write(self, data):
        return self.file.write(data)

    def flush(self):
        self.file.flush()

    def tell(self):
        return self.file.tell()

    @property
    def closed(self):
        return self.file.closed

    def close(self):
        if self.file.closed:
            return
        self.file.close()
        os.replace(self.temporary, self.final)


def resolve(uri: str, base_dir: str | None) -> str:
    """A uri from a manifest: relative paths are taken relative to the manifest's directory."""
    if base_dir is None or "://" in uri or posixpath.isabs(uri):
        return uri
    if "://" in base_dir:
        return base_dir.rstrip("/") + "/" + uri
    return posixpath.normpath(posixpath.join(base_dir, uri))


def parent(uri: str) -> str:
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme + "://" + posixpath.dirname(rest.rstrip("/"))
    return posixpath.dirname(posixpath.abspath(uri))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _has_credentials() -> bool:
    """Whether botocore finds AWS credentials here (environment, files, role, ...)."""
    try:
        import botocore.session

        return botocore.session.get_session().get_credentials() is not None
    except Exception:  # noqa: BLE001 - no botocore, or a broken configuration: we cannot tell
        return True


_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionRefusedError",
                "ClientConnectorDNSError", "gaierror"}


def describe_error(error: BaseException, uri: str | None = None) -> str:
    """A storage problem in a few words a user can act on (:func:`storage_problem`); otherwise
    the error's type and first line."""
    problem = storage_problem(error, uri)
    if problem:
        return problem
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def storage_problem(error: BaseException, uri: str | None = None) -> str | None:
    """No credentials, endpoint unreachable, access denied or not found, in words a user can act
    on; None for other errors. The same wording for a manifest, an output, a model and a media
    object."""
    s3 = uri is None or protocol(uri) in ("s3", "s3a")
    chain = list(_chain(error))
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give "
                "the nodes a role that may read it")
    endpoint = re.search(r"\w+://[^/\"\s]+", text) if names & _UNREACHABLE else None
    at = f" at {endpoint.group(0)}" if endpoint else ""
    if names & {"ClientConnectorDNSError", "gaierror"}:
        return f"endpoint unreachable: unknown host{at} (check --s3-endpoint / AWS_ENDPOINT_URL)"
    if names & _UNREACHABLE:
        return f"endpoint unreachable: nothing answers{at} (check --s3-endpoint / AWS_ENDPOINT_URL)"
    if any(isinstance(e, PermissionError) for e in chain) or "AccessDenied" in text or "(403)" in text:
        if s3 and not _has_credentials():
            return "access denied, and no credentials were found (set AWS_ACCESS_KEY_ID / AWS_PROFILE, or a role)"
        return "access denied"
    if any(isinstance(e, FileNotFoundError) for e in chain) or names & {"NoSuchBucket", "NoSuchKey"}:
        return "not found: the bucket does not exist" if "bucket does not exist" in text else "not found"
    return None


def is_permanent(error: BaseException) -> bool:
    if isinstance(error, _PERMANENT):
        return True
    return isinstance(error, OSError) and error.errno in _PERMANENT_ERRNOS


def read_bytes(uri: str, max_bytes: int, options: StorageOptions = DEFAULT) -> tuple[bytes, int]:
    """All bytes of one object, and how many retries it took.

    Transient errors (throttling, 5xx, dropped connections, timeouts) are retried up to
    ``options.attempts`` tries with exponential backoff; a missing or denied object fails at once.
    Objects over ``max_bytes`` are refused before they are read.
    """
    retries = 0
    while True:
        try:
            return _read_once(uri, max_bytes, options), retries
        except StorageError as e:
            e.retries = retries
            raise
        except Exception as e:  # noqa: BLE001 - storage libraries raise many types; classify them
            shown = redact(uri)
            if isinstance(e, IsADirectoryError):
                raise StorageError(f"is a directory, not a file: {shown}", retries) from e
            if is_permanent(e) or _unreachable(e) or retries + 1 >= options.attempts:
                tries = "" if is_permanent(e) or _unreachable(e) else f" after {retries + 1} tries"
                raise StorageError(f"{describe_error(e, uri)}: {shown}{tries}", retries) from e
            delay = min(options.max_backoff_s, options.backoff_s * 2**retries)
            time.sleep(delay * random.uniform(0.5, 1.0))
            retries += 1


def _unreachable(error: BaseException) -> bool:
    """No credentials, or no endpoint at all: retrying the next object would not help either."""
    return describe_error(error).startswith(("no credentials", "endpoint unreachable"))


def _read_once(uri: str, max_bytes: int, options: StorageOptions) -> bytes:
    """One attempt, one request: a ranged GET for at most ``max_bytes + 1`` bytes (no HEAD)."""
    fs, path = filesystem(uri, options, single_attempt=True)
    try:
        data = fs.cat_file(path, start=0, end=max_bytes + 1)
    except OSError as e:
        if "range" not in str(e).lower():  # InvalidRange: "The requested range is not satisfiable"
            raise
        data = fs.cat_file(path)  # S3 answers 416 to a range on an empty object: read it whole
    if len(data) > max_bytes:
        raise StorageError(f"more than {max_bytes} bytes (--max-bytes)")
    return data


def fingerprint(uri: str, options: StorageOptions = DEFAULT) -> str:
    """A content fingerprint of a model directory: file names and sizes, and the JSON configs."""
    return fingerprint_files(uri, options)[0]


def fingerprint_files(uri: str, options: StorageOptions = DEFAULT) -> tuple[str, list[str]]:
    """:func:`fingerprint`, and the names of the directory's files."""
    fs, path = filesystem(uri, options)
    digest = hashlib.sha256()
    names = []
    for info in sorted(fs.ls(path, detail=True), key=lambda i: i["name"]):
        if info.get("type") != "file":
            continue
        name = posixpath.basename(info["name"])
        names.append(name)
        digest.update(f"{name}:{info.get('size')}\n".encode())
        if name.endswith(".json"):
            digest.update(fs.cat_file(info["name"]))
    return digest.hexdigest()[:16], names


@contextlib.contextmanager
def node_lock(path: str):
    """Held by one process of this machine at a time (the others wait): one actor fetches a model,
    the others then find it in the node's cache."""
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def localize_dir(uri: str, options: StorageOptions = DEFAULT, cache_root: str | None = None,
                 known_fingerprint: str | None = None) -> str:
    """A local copy of a remote directory (model weights), made once per machine and reused.

    Concurrent actors on one node take a file lock, so one downloads and the others wait.
    ``known_fingerprint``: the directory's, as the driver computed it (else it is listed again here).
    """
    if is_local(uri):
        return filesystem(uri)[1]
    root = cache_root or os.path.join(
        os.environ.get("QEVAL_RAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qeval-ray"), "models")
    content = known_fingerprint or fingerprint(uri, options)
    target = os.path.join(root, hashlib.sha256(f"{uri}:{content}".encode()).hexdigest()[:24])
    done = os.path.join(target, ".qeval-complete")
    os.makedirs(root, exist_ok=True)
    with node_lock(target + ".lock"):
        if os.path.exists(done):
            log.info("%s is in this node's cache: %s", redact(uri), target)
            return target
        fs, path = filesystem(uri, options)
        staging = target + f".part-{uuid.uuid4().hex[:8]}"
        fs.get(path.rstrip("/") + "/", staging, recursive=True)
        if os.path.exists(target):
            import shutil

            shutil.rmtree(target)
        os.replace(staging, target)
        open(done, "w").close()
        log.info("copied %s to this node's cache: %s", redact(uri), target)
    return target
