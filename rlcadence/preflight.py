"""Checks of a run's inputs that need the model's tokenizer, done before any run row, checkpoint or
Prefect task exists: the model directory itself and every dataset's rows, lengths included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlcadence.config import RLConfig


def seed_model_dir(config: RLConfig) -> Path | None:
    """The checked seed model directory; None for the embedded bootstrap model (built by the flow)."""
    from rlcadence.models.source import check_model_dir, resolve_model_dir

    if config.model is None:
        return None
    path = check_model_dir(resolve_model_dir(config.model))
    if config.engine != "transformers":
        from rlcadence.devices import resolve_device
        from rlcadence.engines.settings import resolve_engine

        device = resolve_device(config.generator_device or config.device).type
        if resolve_engine(config.engine, device, config.generator_url) == "vllm":
            check_vllm_architecture(path)
    return path


def check_vllm_architecture(path: Path) -> None:
    """``engine: vllm``: the model's architecture must be one vLLM implements; else fail naming the path."""
    from vllm import ModelRegistry

    from rlcadence.models.source import UnusableModel

    archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    supported = set(ModelRegistry.get_supported_archs())
    if not any(a in supported for a in archs):
        raise UnusableModel(f"model {path}: architecture {', '.join(archs) or '(none)'} is not one vLLM can load "
                            "(engine=vllm); use engine=transformers")


def check_generator_url(config: RLConfig) -> None:
    """Server mode: ``generator_url`` answers as a vLLM server with the weight-sync endpoints, or the run stops
    here within 10 s, naming the URL (rlcadence.engines.server.GeneratorUnreachable)."""
    if config.generator_url is not None:
        from rlcadence.engines.server import check_generator

        check_generator(config.generator_url, config.generator_server.connect_timeout_s, delta=config.vllm.sync == "delta")


class TrainProcessesError(ValueError):
    """A train stage the flow cannot run (the CLI prints it as one line)."""


def check_train_processes(config: RLConfig) -> None:
    """``train_world_size`` > 1: what the flow's data-parallel train stage (rlcadence.trainer.group) does
    not cover is refused before any work, naming the field. (More ranks than CUDA devices or CPU cores is
    refused when the config is built: ``devices.check_world_size``.)"""
    n = config.train_world_size
    if n == 1:
        return
    pl = config.policy_loss
    refusals = [
        (config.algorithm != "grpo", f"algorithm={config.algorithm} (the data-parallel update is GRPO/PPO-clip only)"),
        (pl.kl_beta > 0, f"policy_loss.kl_beta={pl.kl_beta:g} (the ranks hold no reference model)"),
        (pl.tis_cap is not None, f"policy_loss.tis_cap={pl.tis_cap} (not in the data-parallel update)"),
        (config.device.startswith("cuda:") and config.device != "cuda:0",
         f"device={config.device} (rank r trains on cuda:r: use cuda or cuda:0)"),
    ]
    if config.engine != "transformers":
        import os

        from rlcadence.devices import resolve_device
        from rlcadence.engines.settings import resolve_engine

        in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") == "0"
        device = resolve_device(config.generator_device or config.device).type
        vllm = resolve_engine(config.engine, device, config.generator_url) == "vllm"  # not a vLLM server elsewhere
        refusals.append((vllm and in_process, "engine=vllm with its engine core in the flow process "
                         "(VLLM_ENABLE_V1_MULTIPROCESSING=0 would put vLLM into the trainer's process group; "
                         "set it to 1)"))
    bad = [why for refused, why in refusals if refused]
    if bad:
        raise TrainProcessesError(f"train_world_size={n} cannot run with {'; '.join(bad)}; use train_world_size=1")


def check_runner(config: RLConfig) -> None:
    """``runner: ray``: the cluster at ``ray_address`` answers (within 15 s), before any run row or model."""
    if config.runner == "ray":
        from rlcadence.ray_cluster import check_reachable

        check_reachable(config.ray_address)


def max_positions(model_dir: Path) -> int | None:
    """The model's context length from its config.json (None when it declares none)."""
    meta = json.loads((Path(model_dir) / "config.json").read_text())
    for cfg in (meta, meta.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
    return None


def model_positions(config: RLConfig, model_dir: Path | None = None) -> int | None:
    """The seed model's context length (the bootstrap model's from its config)."""
    if config.model is None:
        return config.bootstrap.model.max_position_embeddings
    from rlcadence.models.source import resolve_model_dir

    return max_positions(model_dir if model_dir is not None else resolve_model_dir(config.model))


def default_max_prompt_tokens(config: RLConfig, model_dir: Path | None = None) -> int | None:
    """The longest prompt that leaves room for ``sampling.max_new_tokens``: max_position_embeddings - that."""
    positions = model_positions(config, model_dir)
    if positions is None:
        return None
    limit = positions - config.sampling.max_new_tokens
    if limit < 1:
        from rlcadence.environments.datasets import DatasetError

        raise DatasetError(f"sampling.max_new_tokens={config.sampling.max_new_tokens} leaves no room for a prompt "
                         f"in the model's max_position_embeddings={positions}")
    return limit


def seed_tokenizer(config: RLConfig, model_dir: Path | None) -> Any:
    """The tokenizer the run's prompts are encoded with (the bootstrap model's is built, not loaded)."""
    if model_dir is None:
        from rlcadence.models.tiny import build_tokenizer

        return build_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def check_environments(config: RLConfig, model_dir: Path | None = None) -> None:
    """Read and encode every dataset with the model's tokenizer: a bad or over-long row in fail mode, a file
    left with no usable row, or a missing reward-model/judge directory stops here, named."""
    from rlcadence.environments.datasets import load_prompts
    from rlcadence.environments.eval_sets import load_eval_set
    from rlcadence.models.source import check_model_dir, resolve_model_dir

    sources = [e for e in config.environments if e.source is not None or e.eval_sets]
    if sources:
        tokenizer = seed_tokenizer(config, model_dir)
        limit = default_max_prompt_tokens(config, model_dir)
        positions = model_positions(config, model_dir)
        for env in sources:
            if env.source is not None:
                load_prompts(env.source.model_copy(update={"environment": env.name}), tokenizer, limit)
            for eval_set in env.eval_sets:  # a missing gold column or a bad row stops here, naming the file
                load_eval_set(env.eval_source(eval_set), eval_set, tokenizer, positions)
    for env in config.environments:
        if env.reward_model is not None:
            resolve_model_dir(env.reward_model)
        if env.judge is not None:
            check_model_dir(resolve_model_dir(env.judge.model))  # the judge generates: it needs an EOS


def check_before_work(config: RLConfig) -> Path | None:
    """Every check a run makes before it writes anything, in the order a user would fix them: the Ray
    cluster, the train ranks, the generator server, the seed model directory, then every dataset, reward
    model and judge. Each failure names its field, address or path. Returns the seed model's directory
    (None: the embedded bootstrap model). The CLI calls it before recording the run; the flow again, for
    runs started from a deployment."""
    check_runner(config)  # an unreachable ray_address: one line within 15 s
    check_train_processes(config)
    check_generator_url(config)
    model_dir = seed_model_dir(config)
    check_environments(config, model_dir)
    return model_dir
