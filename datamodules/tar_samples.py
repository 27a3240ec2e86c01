"""WebDataset shard URLs and samples: expand URL patterns, stream a tar and group its members by key.

A shard is a tar whose members are named `KEY.EXT` (video2dataset layout: `KEY.mp4`, `KEY.txt`,
`KEY.json`); consecutive members with the same key form one sample. As in WebDataset, the key is the
member path up to the first dot of its file name and the extension is the rest, lower-cased.

URLs (a string or a list of strings) may be
- local paths, or a local directory, meaning every `*.tar` file in it in sorted order;
- brace patterns, `/data/webvid/{00000..00099}.tar` (expanded by `webdataset`, which also splits `::`);
- `pipe:` commands whose standard output is the tar (`pipe:aws s3 cp s3://bucket/00000.tar -`),
  and any other URL scheme `webdataset.gopen` opens (http, gs, ...).

`index_shard` lists a shard's sample keys without reading the samples: for a local uncompressed tar from its
member headers alone (seeking over the data), recording where each sample starts so that `iter_tar_samples`
can begin there; for any other URL by streaming the shard once.
"""

import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls


class CorruptShardError(OSError):
    """A shard could not be opened or read to its end."""


@dataclass(frozen=True)
class ShardIndex:
    """The samples of one shard in tar order: `keys[i]` is the key of sample `i`, and `offsets[i]` the byte
    offset of its first member's header (None when the shard is not a seekable local file); `damage` says where
    the listing stopped short (None: read to its end or to the requested count)."""

    url: str
    keys: list[str]
    offsets: list[int] | None
    damage: str | None = None


@dataclass(frozen=True)
class RawSample:
    """The members of one sample, still encoded: `members["mp4"]` is the video file's bytes."""

    key: str
    members: dict[str, bytes]
    url: str


def expand_shard_urls(urls: str | Sequence[str], config_key: str) -> list[str]:
    """Expand brace patterns and local directories into a flat list of shard URLs.

    Args:
        urls: one URL/pattern/directory, or a list of them.
        config_key: the config key the URLs come from (`data.train_urls`), named in errors.

    Raises:
        FileNotFoundError: a local path does not exist.
        ValueError: the URLs expand to nothing.
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    expanded: list[str] = []
    for pattern in patterns:
        for url in expand_urls(str(pattern)):
            if not _is_local(url):
                expanded.append(url)
            elif Path(url).is_dir():
                expanded.extend(str(path) for path in sorted(Path(url).glob("*.tar")))
            elif Path(url).is_file():
                expanded.append(url)
            else:
                raise FileNotFoundError(
                    f"{config_key}: shard {url} does not exist (from pattern {pattern!r})"
                )
    if not expanded:
        raise ValueError(f"{config_key}={urls!r} names no shards (an empty directory or an empty list)")
    return expanded


def _is_local(url: str) -> bool:
    if url.startswith("pipe:"):
        return False
    scheme = urlparse(url).scheme
    # a one-letter scheme is a Windows drive letter
    return scheme in ("", "file") or len(scheme) == 1


def iter_tar_samples(url: str, start_offset: int = 0) -> Iterator[RawSample]:
    """Stream the samples of one shard in tar order, from the sample whose header is at byte `start_offset`
    (an offset from `index_shard`; local files only).

    Raises:
        CorruptShardError: the shard cannot be opened, ends in the middle, or its `pipe:` command fails
            (after yielding every complete sample before the damage; the sample being read is dropped).
    """
    try:
        stream = gopen(url, "rb")
        if start_offset:
            stream.seek(start_offset)
    except OSError as error:
        raise CorruptShardError(f"shard {url}: {type(error).__name__}: {error}") from error
    read_to_end = False
    try:
        yield from _group_members(stream, url)
        read_to_end = True
    except (tarfile.TarError, EOFError, OSError) as error:
        raise CorruptShardError(f"shard {url}: {type(error).__name__}: {error}") from error
    finally:
        _close(stream, url, check_status=read_to_end)


def index_shard(url: str, max_samples: int | None = None) -> ShardIndex:
    """The keys (and, for a local uncompressed tar, the start offsets) of a shard's first `max_samples` samples
    (all when None), grouped as `iter_tar_samples` groups them.

    A shard damaged part way (truncated, a failing download) is indexed up to the damage, `damage` saying what it
    was: the sample being read there is listed, and its reader will find it unreadable.

    Raises:
        CorruptShardError: the shard cannot be opened as a tar.
    """
    if _is_plain_path(url):
        try:
            with tarfile.open(url, mode="r:") as tar:
                return _index_members(url, tar, max_samples, with_offsets=True)
        except tarfile.ReadError:
            pass  # compressed, or no tar header where it starts: streamed below, which names the error
        except OSError as error:
            raise CorruptShardError(f"shard {url}: {type(error).__name__}: {error}") from error
    try:
        stream = gopen(url, "rb")
    except OSError as error:
        raise CorruptShardError(f"shard {url}: {type(error).__name__}: {error}") from error
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            return _index_members(url, tar, max_samples, with_offsets=False)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise CorruptShardError(f"shard {url}: {type(error).__name__}: {error}") from error
    finally:
        _close(stream, url, check_status=False)  # a failing pipe: iter_tar_samples reports it where it reads


def _index_members(url: str, tar: tarfile.TarFile, max_samples: int | None, with_offsets: bool) -> ShardIndex:
    """Keys and header offsets of the samples of an open tar, reading headers only, up to any damage."""
    keys: list[str] = []
    offsets: list[int] = []
    damage = None
    try:
        for info in tar:
            if not info.isfile():
                continue
            key, _ = split_member_name(info.name)
            if keys and keys[-1] == key:
                continue
            if max_samples is not None and len(keys) == max_samples:
                break
            keys.append(key)
            offsets.append(info.offset)
    except (tarfile.TarError, EOFError, OSError) as error:
        damage = f"{type(error).__name__}: {error}"
    return ShardIndex(url, keys, offsets if with_offsets else None, damage)


def _is_plain_path(url: str) -> bool:
    """A local path without a URL scheme (a one-letter scheme is a Windows drive)."""
    return not url.startswith("pipe:") and len(urlparse(url).scheme) <= 1


def _group_members(stream: IO[bytes], url: str) -> Iterator[RawSample]:
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        key: str | None = None
        members: dict[str, bytes] = {}
        for info in tar:
            if not info.isfile():
                continue
            member_key, extension = split_member_name(info.name)
            if member_key != key and members:
                yield RawSample(key=key, members=members, url=url)
                members = {}
            key = member_key
            file = tar.extractfile(info)
            members[extension] = file.read() if file is not None else b""
        if members:
            yield RawSample(key=key, members=members, url=url)


def _close(stream: IO[bytes], url: str, check_status: bool) -> None:
    """Close the shard stream. A `pipe:` command's failure counts only when the shard was read to its end:
    a reader that stops early closes the pipe, and the command then dies of SIGPIPE by design."""
    try:
        stream.close()
    except OSError as error:
        if check_status:
            raise CorruptShardError(f"shard {url}: {type(error).__name__}: {error}") from error


def split_member_name(name: str) -> tuple[str, str]:
    """`"dir/000123.mp4"` -> `("dir/000123", "mp4")`: key up to the first dot of the file name."""
    directory, base = os.path.split(name)
    stem, dot, extension = base.partition(".")
    return os.path.join(directory, stem), extension.lower() if dot else ""
