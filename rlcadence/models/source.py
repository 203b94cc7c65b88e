"""Where the seed model comes from: a local directory or a hub id (already in the local HF cache)."""

from __future__ import annotations

from pathlib import Path


class ModelNotFound(FileNotFoundError):
    pass


def resolve_model_dir(spec: str) -> Path:
    """A local directory with config.json, or a hub id resolvable offline; else an error naming it."""
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"model path {path} exists but has no config.json (not a transformers model dir)")
        return path.resolve()
    looks_like_path = spec.startswith(("/", ".", "~")) or spec.count("/") != 1
    if looks_like_path:
        raise ModelNotFound(f"model path {spec} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - hub errors vary by version; the message is what matters
        raise ModelNotFound(
            f"model {spec!r} is neither a local directory nor a hub id in the local cache "
            f"(this machine cannot download): {type(exc).__name__}"
        ) from None
