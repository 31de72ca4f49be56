"""uri -> filesystem. The only module that knows about local paths, file://, s3://, gs://, ...

Everything goes through fsspec, so any installed protocol works; Ray Data gets the same
filesystem wrapped for pyarrow. No other module builds a storage client.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlparse

import fsspec

LOCAL_PROTOCOLS = ("file", "local")


class StorageError(Exception):
    """A uri could not be read or written; ``kind`` says why in one word (not_found, denied, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def protocol(uri: str) -> str:
    scheme = urlparse(uri).scheme
    # A Windows drive letter or a bare path has no real scheme.
    return scheme if len(scheme) > 1 else "file"


def is_local(uri: str) -> bool:
    return protocol(uri) in LOCAL_PROTOCOLS


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    return fsspec.core.url_to_fs(uri)


def arrow_filesystem(uri: str):
    """A pyarrow filesystem for ``uri`` (what Ray Data's readers and writers take) and the path."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


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


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """All bytes of one object, refusing objects over ``max_bytes`` before reading them."""
    try:
        fs, path = filesystem(uri)
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise StorageError("too_large", f"{size} bytes exceeds the limit of {max_bytes} bytes (--max-bytes)")
        with fs.open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise StorageError("not_found", f"not found: {uri}") from e
    except PermissionError as e:
        raise StorageError("denied", f"access denied: {uri}") from e
    except IsADirectoryError as e:
        raise StorageError("not_a_file", f"is a directory, not a file: {uri}") from e
    except OSError as e:
        raise StorageError("io", f"cannot read {uri}: {e}") from e
    if len(data) > max_bytes:
        raise StorageError("too_large", f"more than {max_bytes} bytes (--max-bytes)")
    return data
