"""Hub models laid out as huggingface_hub caches what it downloads (models--ORG--NAME/ with blobs/, snapshots/COMMIT/
links into them, refs/main and the tree listing under trees/), so that the real fetch code (snapshot_download)
runs here without the hub: with the hub out of reach, it resolves a pinned commit from this cache, as it does on a
login node that fetched before."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Files a hub repository holds beside the model that a run must not fetch: the same weights again as pickles, the
# upstream checkpoint under original/, repository files.
DECOYS = {
    "pytorch_model.bin": b"a pickle of the same weights",
    "original/consolidated.00.pth": b"the upstream checkpoint",
    "README.md": b"# a model card\n",
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
}
LFS_SUFFIXES = (".safetensors", ".bin", ".pth")


def git_blob_id(data: bytes) -> str:
    """The git object id of a file's bytes: what the hub's listing (and the cache's blob name) is for a plain file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hub_cache(hub_cache: Path, repo_id: str, commit: str, files: dict[str, bytes | Path]) -> Path:
    """`files` (repository path -> bytes, or a file to take them from) as the hub cache `hub_cache` (HF_HOME/hub)
    holds repo_id at `commit`, fetched from the main branch; returns the snapshot folder. Large-file (LFS) blobs
    are named by their sha256, others by their git id, as the hub's ETags name them."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    storage = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    entries = {}
    for path, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        sha256 = hashlib.sha256(data).hexdigest()
        lfs = path.endswith(LFS_SUFFIXES)
        blob = storage / "blobs" / (sha256 if lfs else git_blob_id(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        entries[path] = TreeCacheEntry(size=len(data), blob_id=git_blob_id(data),
                                       lfs_sha256=sha256 if lfs else None, lfs_size=len(data) if lfs else None)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    write_tree_cache(str(storage), commit, entries)
    return snapshot


def model_files(folder: Path) -> dict[str, Path]:
    """A model folder's files, as a repository holds them."""
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*")) if path.is_file()}
