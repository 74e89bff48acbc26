"""What the machine or the network refused, said as a gruviz error at the CLI's boundary (flows.cli).

    OSError ENOSPC, EDQUOT           the store's disk is full          -> StoreError: free space, or move the store
    OSError EROFS                    the store is read-only            -> StoreError: mount it read-write, or move it
    OSError EACCES, EPERM            no permission on a file           -> StoreError: grant access, or move the store
    connection refused/unreachable   the object store's endpoint       -> StoreError: start it, or fix the endpoint
    (botocore ConnectionError, aiohttp ClientConnectionError, ConnectionError, errno ECONNREFUSED...)

Anything else is not ours to explain and keeps its traceback (a bug). The exception's causes are searched too,
since fsspec, pyarrow and zarr wrap what the operating system said.
"""

from __future__ import annotations

import errno
import os

from gruviz_core.errors import StoreError

__all__ = ["described"]

_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM}
_UNREACHABLE = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}
_ELSEWHERE = "or point --home / GRUVIZ_HOME at"


def described(exc: BaseException, home: str) -> StoreError | None:
    """A StoreError naming the store `home`, the file where known and the fix, for a full or read-only disk, a
    denied permission or an unreachable endpoint anywhere in `exc`'s causes; None for anything else."""
    for e in _causes(exc):
        if _unreachable(e):
            return StoreError(f"cannot reach the object store of {home} at {_endpoint(e)} ({_detail(e)}); check "
                              "that the server is up and that AWS_ENDPOINT_URL_S3 (or ~/.aws/config) names it, "
                              f"{_ELSEWHERE} a local directory")
        code = getattr(e, "errno", None) if isinstance(e, OSError) else None
        if code in _FULL:
            return StoreError(f"no space left on the device of store {home}{_file(e)}; the command stopped and "
                              f"published nothing it was writing: free space there, {_ELSEWHERE} a disk with room")
        if code == errno.EROFS:
            return StoreError(f"store {home} is on a read-only file system{_file(e)}; nothing was written: mount it "
                              f"read-write, {_ELSEWHERE} a writable directory")
        if code in _DENIED:
            return StoreError(f"permission denied{_file(e)} (store {home}); nothing was published: give this user "
                              f"access to it, {_ELSEWHERE} a directory it can write")
    return None


def _causes(exc: BaseException, limit: int = 10) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < limit and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _unreachable(e: BaseException) -> bool:
    if isinstance(e, ConnectionError) or (isinstance(e, OSError) and e.errno in _UNREACHABLE):
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:
        BotoConnectionError = ()  # noqa: N806 - no object-store client installed
    try:
        from aiohttp import ClientConnectionError
    except ImportError:
        ClientConnectionError = ()  # noqa: N806
    return isinstance(e, BotoConnectionError) or isinstance(e, ClientConnectionError)


def _endpoint(e: BaseException) -> str:
    """The endpoint the client was told to use, else the URL it tried (botocore names it), else its default."""
    tried = getattr(e, "kwargs", {}).get("endpoint_url") if isinstance(getattr(e, "kwargs", None), dict) else None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or tried or "its default endpoint"


def _detail(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _file(e: BaseException) -> str:
    name = getattr(e, "filename", None)
    return f" ({name})" if name else ""
