"""Where the seed model comes from: a local directory or a hub id (already in the local HF cache), and
whether that directory is usable: an architecture transformers knows, and a tokenizer with an EOS."""

from __future__ import annotations

from pathlib import Path


class ModelNotFound(FileNotFoundError):
    pass


class UnusableModel(ModelNotFound):
    """A model directory that exists but cannot be trained here (a ModelNotFound, so every caller that
    reports a missing model, the CLI included, reports this one the same way: one line naming the path)."""


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


def check_model_dir(path: Path) -> Path:
    """Fail before any work, naming ``path``, on what would otherwise fail (or never stop) mid-run:
    an architecture transformers does not know (no remote code is trusted), one that is not a causal LM,
    or a tokenizer with no EOS token."""
    import json

    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnusableModel(f"model {path}: config.json is unreadable ({exc})") from None
    model_type = meta.get("model_type") if isinstance(meta, dict) else None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        arch = ", ".join(meta.get("architectures") or []) if isinstance(meta, dict) else ""
        raise UnusableModel(
            f"model {path}: architecture {arch or model_type!r} (model_type {model_type!r}) is not a causal LM that "
            f"this transformers knows (remote code is not run)")
    try:
        AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnusableModel(f"model {path}: cannot load its config or tokenizer ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if tokenizer.eos_token_id is None:
        raise UnusableModel(f"model {path}: its tokenizer has no EOS token, so generation could never stop "
                            "(set eos_token in tokenizer_config.json)")
    return path
