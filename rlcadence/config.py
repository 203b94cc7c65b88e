"""Flow parameters: one pydantic model per flow, which is also the CLI/config-file schema and the
Prefect UI form. Invalid values fail here, before any work, with the field named.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from rlcadence.devices import DEVICE_PATTERN, check_device, check_world_size
from rlcadence.engines.base import SamplingParams
from rlcadence.engines.settings import (
    VLLM_MISSING,
    EngineKind,
    GeneratorServerSettings,
    VLLMSettings,
    vllm_installed,
)
from rlcadence.environments.spec import EnvironmentSpec
from rlcadence.models.config import TinyModelConfig
from rlcadence.objectives_config import AdvantageConfig, DPOConfig, FilterConfig, PolicyLossConfig
from rlcadence.storage.location import StoreLocation
from rlcadence.storage.s3 import S3Settings
from rlcadence.storage.stores import open_location
from rlcadence.strict import Strict as _StrictBase

DEFAULT_STORE = ".rlcadence/store"

Cadence = int | Literal["offline"]


class Strict(_StrictBase):
    """Flow parameters: also re-validated on assignment (the Prefect UI and tests set fields)."""

    model_config = ConfigDict(validate_assignment=True)


class ArithmeticConfig(Strict):
    """The embedded verifiable environment (n-digit addition)."""

    digits: int = Field(3, ge=1, le=6, description="Operands have up to this many digits.")
    n_heldout: int = Field(500, ge=10, description="Size of the held-out split (never trained on).")
    split_seed: int = Field(1234, description="Seed of the split; fixed so every run evaluates on the same set.")


class OptimizerConfig(Strict):
    """AdamW or SGD. ``lr=None`` takes the optimizer's default below (one source of truth)."""

    name: Literal["adamw", "sgd"] = Field("adamw", description="Paper C: SGD matches AdamW in RL with far sparser updates.")
    lr: float | None = Field(None, gt=0, description="None: the optimizer's default in DEFAULT_LR (1e-4 adamw, 0.02 sgd), "
                              "measured on the tiny model: AdamW >= 3e-4 and SGD 0.1 degraded held-out accuracy.")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, description="Adam epsilon (paper A uses 1e-4 for math DPO).")
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD only; 0 as in paper C.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm; None disables clipping.")
    warmup_steps: int = Field(
        10, ge=0, description="Linear LR warm-up. A fresh Adam's first steps are sign steps of size lr on every weight, "
        "which wrecks a converged seed model (measured: 39% -> 5% held-out after one step at 1e-3).")
    master_dtype: Literal["float32", "bfloat16"] = Field("float32", description="Dtype of the trained weights.")

    DEFAULT_LR: ClassVar[dict[str, float]] = {"adamw": 1e-4, "sgd": 0.02}

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else self.DEFAULT_LR[self.name]

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): stateless, so resume needs no scheduler."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.resolved_lr * (step + 1) / self.warmup_steps
        return self.resolved_lr


class BootstrapConfig(Strict):
    """SFT of the embedded tiny model on the arithmetic environment; cached in the store by its parameters."""

    RENAMED: ClassVar[dict[str, str]] = {"task": "environment"}

    model: TinyModelConfig = TinyModelConfig()
    environment: ArithmeticConfig = ArithmeticConfig()
    seed: int = 0
    steps: int = Field(2000, ge=1, description="Most SFT optimizer steps (the last anneal_steps decay the lr to 0).")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, description="Peak lr (AdamW), held after warm-up until the anneal.")
    warmup_steps: int = Field(30, ge=0)
    target_accuracy: float | None = Field(
        0.3, gt=0, le=1, description="Start the anneal as soon as greedy exact match on a validation split (never "
        "the held-out one) reaches this; None trains all `steps`. Why: the loss drops suddenly when carries are "
        "learnt, after 300 to 1000+ steps depending on seed and CPU, so a fixed step count gives 2% on one machine "
        "and 85% on another. Stopping on a target narrows that to 46-75% over seeds 0-4.")
    check_every: int = Field(25, ge=1, description="Steps between validation checks for target_accuracy.")
    anneal_steps: int = Field(50, ge=0, description="Linear lr decay to 0 at the end (capped at `steps`).")
    n_validation: int = Field(200, ge=10, description="Validation problems for the target check.")


class RLConfig(Strict):
    """One RL experiment: generate -> score -> store -> train -> sync, ``steps`` times."""

    RENAMED: ClassVar[dict[str, str]] = {"tasks": "environments"}

    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="None: a fresh id is made.")
    store: str = Field(DEFAULT_STORE, description="Local directory or s3://bucket/prefix for all run data.")
    s3: S3Settings | None = Field(
        None, description="For an s3:// store: endpoint URL, region, profile or Prefect AwsCredentials block "
        "(never keys: those come from the AWS credential chain). None = the AWS_* environment.")
    model: str | None = Field(None, description="Model dir or hub id; None = the embedded bootstrap model.")
    bootstrap: BootstrapConfig = BootstrapConfig()
    environments: list[EnvironmentSpec] = Field(
        default_factory=lambda: [EnvironmentSpec()], min_length=1,
        description="The environment mix; default: the embedded arithmetic environment. Add {kind: toy_pref} for a "
        "non-verifiable environment scored by a deterministic stand-in for a reward model.")
    seed: int = 0
    steps: int = Field(800, ge=1, description="Optimizer steps (800: the README's main job, ~5 min on 2 cores).")
    prompts_per_step: int = Field(32, ge=1, description="M: prompts per optimizer step.")
    group_size: int = Field(8, ge=2, description="G: samples per prompt (GRPO group / DPO candidates).")
    sampling: SamplingParams = SamplingParams(max_new_tokens=6)
    algorithm: Literal["grpo", "dpo", "sft"] = Field(
        "grpo", description="grpo: group-relative policy gradient (PPO-clip when ppo_epochs/mini_batches > 1); "
        "dpo: pairs from each prompt's G samples; sft: cross-entropy on the gold answers of the same prompts "
        "(rollouts are still generated and scored, so SFT and RL runs are compared on one table).")
    generation_batch_prompts: int | None = Field(
        None, ge=1, description="Prompts per engine call. None = all M x G samples of a step in one call "
        "(DASH pre-sampling); a small value samples per micro-batch, the baseline DASH is measured against.")
    advantage: AdvantageConfig = AdvantageConfig()
    policy_loss: PolicyLossConfig = PolicyLossConfig()
    filter: FilterConfig = FilterConfig()
    dpo: DPOConfig = DPOConfig()
    ppo_epochs: int = Field(1, ge=1, description="K passes over each generated batch (PPO 'multi').")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per epoch (PPO 'mini'); 1 = one step.")
    micro_batch_size: int | None = Field(None, ge=1, description="Rows per backward pass; None = whole mini-batch.")
    optimizer: OptimizerConfig = OptimizerConfig()
    sync_every: Cadence = Field(1, description="Generator copies the trainer's weights every s steps; 'offline' never.")
    ref_sync_every: Cadence = Field("offline", description="Reference model sync cadence; 'offline' = fixed initial model.")
    eval_every: int = Field(50, ge=1, description="Evaluate greedy accuracy on the held-out split every E steps.")
    eval_size: int = Field(500, ge=1, description="Held-out problems per evaluation.")
    eval_sampling: SamplingParams = SamplingParams(temperature=0.0, max_new_tokens=6)
    loggers: list[Literal["tensorboard"]] = Field(
        default_factory=list, description="Extra metric sinks besides the store and the Prefect UI. 'tensorboard': "
        "event files of every step's metrics (torch's SummaryWriter; needs the tensorboard package) under "
        "<store>/tensorboard/<run_id> for a local store, the local cache for S3.")
    keep_checkpoints: int = Field(2, ge=1, description="Latest checkpoints kept (plus those the generator/ref need).")
    checkpoint_every: int = Field(
        10, ge=1, description="Steps between full trainer checkpoints (model, optimizer, RNG, cursor, versions). "
        "Resume loads the last one and replays the committed steps after it from the stored rollouts.")
    compact_every: int = Field(
        100, ge=0, description="Every N steps the committed step files of the rollouts and metrics tables are "
        "merged into one file (and 10 such files into one), and at the run's end into files of up to 256 MiB; "
        "0 = never (`rlcadence compact` still can). Queries read the same rows either way.")
    task_span: Literal["segment", "stage"] = Field(
        "segment", description="What one Prefect task run covers. 'segment': `segment_steps` steps (task run "
        "`steps[10-19]`); each stage's result is recorded in the run's staging area, so a crash or retry resumes at "
        "the stage, and Prefect's cost per step stays small (bench/orchestration_overhead.py). 'stage': one task "
        "run per stage and step (`generate[step 12]`), resumed through Prefect's result cache.")
    segment_steps: int = Field(10, ge=1, description="Steps per task run when task_span is 'segment'; segments "
                               "start at multiples of it, so a resumed run's segments line up with the first run's.")
    checkpoint_shard_bytes: int = Field(2 * 1024**3, ge=1024**2, description="Safetensors shard size cap.")
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="Trainer and reference model (and, unless given "
                        "their own, generator and evaluation): auto (CUDA when available), cpu, cuda, cuda:N.")
    generator_device: str | None = Field(None, pattern=DEVICE_PATTERN, description="None: same as `device`.")
    generator_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/\S*)?$", description="Server mode: an OpenAI-compatible vLLM server "
        "(`rlcadence serve-generator` starts one; VLLM_SERVER_DEV_MODE=1 for its weight-sync endpoints) that "
        "generates instead of an engine in this process; each sync writes safetensors to "
        "generator_server.weights_dir and reloads them there. None: generate in this process.")
    generator_server: GeneratorServerSettings = GeneratorServerSettings()
    engine: EngineKind = Field(
        "auto", description="Generation engine: transformers (a sampling loop, runs anywhere), vllm (needs the "
        "[vllm] extra), or auto: vLLM when it is installed and the generator is on CUDA, else transformers.")
    vllm: VLLMSettings = VLLMSettings()
    reference_offload: bool = Field(False, description="On CUDA, keep the reference model on the CPU between uses.")
    activation_checkpointing: bool = Field(False, description="Recompute activations in backward (less memory).")
    bf16_autocast: bool = Field(True, description="bf16 autocast for forward/backward on CUDA (ignored on CPU).")
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="Token budget of one backward pass: rows are grouped by length and cut so that "
        "rows x longest row <= budget. None: micro_batch_size rows (or the whole mini-batch).")
    sparsity: Literal["bf16_isclose", "fp32_abs"] = Field(
        "bf16_isclose", description="How update sparsity counts an unchanged weight (both cast to bf16): "
        "bf16_isclose (default, sparsity_in_rl's script: bf16 difference, threshold bf16(1e-5) = 1.00136e-05) or "
        "fp32_abs (exact float32 difference > 1e-5). About 2 points apart on random deltas.")
    logits_chunk_tokens: int = Field(
        1024, ge=1, description="Tokens per chunk of the LM head: log-probs and entropy never hold [N, T, V] logits.")
    train_world_size: int = Field(
        1, ge=1, description="Data-parallel training processes on this machine (one CUDA device or CPU core each): "
        "1 = the train stage in the flow's process; N > 1 = the flow process is rank 0 and spawns N-1 worker ranks "
        "once per run (algorithm=grpo).")
    train_backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend: auto = nccl on CUDA, gloo on the CPU.")
    train_strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="With train_world_size > 1: DDP (a whole replica per rank) or FSDP2 (fully_shard per "
        "decoder layer, then the root; rank 0 also keeps the consolidated weights for the generator).")
    train_timeout_s: float = Field(
        600.0, gt=0, description="Deadline of the train group's start, of every collective and of each rank's "
        "answer to a step: a dead or stuck rank fails the step naming it, never hangs.")
    runner: Literal["local", "ray"] = Field(
        "local", description="Where generation and verifier scoring run. local: in the flow's process. ray: the "
        "generation engine lives in a Ray actor of this run (it keeps its model across steps; weights arrive "
        "through Ray's object store) and scoring fans out as Ray tasks over the cluster's CPUs; needs the [ray] "
        "extra. Prefect's retries, resume and results are the same either way: the stages still run in the flow.")
    ray_address: str | None = Field(
        None, description="runner=ray: the cluster to join, as `ray.init(address=...)` takes it: host:port of a "
        "running head (the GCS port of `ray start --head`), ray://host:10001 (Ray Client) or auto (the cluster "
        "started on this machine). None: a private local Ray instance for this run. Checked before any work: an "
        "unreachable address fails within 15 s, naming it.")
    ray_generator_gpus: float = Field(
        1.0, gt=0, description="runner=ray: GPUs the generation actor asks Ray for when the generator device is CUDA "
        "(a fraction shares one GPU with other actors); on the CPU it asks for one CPU and no GPU.")
    ray_score_chunk_rows: int = Field(
        64, ge=1, description="runner=ray: rollout rows per Ray scoring task (one task per chunk, spread over the "
        "cluster's CPUs).")
    max_staleness: int = Field(
        0, ge=0, description="Asynchronous RL: generation of step t+1..t+k runs while step t trains (k = this). The "
        "rollouts of step s are sampled by the generator version of the synchronous schedule at step s-k, so "
        "step - policy_version <= k + sync_every - 1 (<= k at sync_every=1); the PPO ratio and tis_cap use the "
        "generator's own log-probs, which corrects for the lag. 0: today's synchronous loop. Needs "
        "max_staleness <= checkpoint_every (resume rebuilds the version it lags behind from a kept checkpoint).")

    @field_validator("sync_every", "ref_sync_every")
    @classmethod
    def _cadence(cls, v: Cadence) -> Cadence:
        if v != "offline" and v < 1:
            raise ValueError("must be a positive number of steps (1 = online) or 'offline'")
        return v

    @field_validator("generator_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else v.rstrip("/")

    @field_validator("engine")
    @classmethod
    def _engine_installed(cls, v: str, info: ValidationInfo) -> str:
        if v == "vllm" and info.data.get("generator_url") is None and not vllm_installed():
            raise ValueError(VLLM_MISSING)
        return v

    @field_validator("runner")
    @classmethod
    def _ray_installed(cls, v: str) -> str:
        from rlcadence.ray_cluster import RAY_MISSING, ray_installed

        if v == "ray" and not ray_installed():
            raise ValueError(RAY_MISSING)
        return v
    @model_validator(mode="after")
    def _server_mode(self) -> RLConfig:
        if self.generator_url is None:
            return self
        if self.engine == "transformers":
            raise ValueError(f"generator_url={self.generator_url} sends generation to a vLLM server; engine must "
                             "be auto or vllm (engine=transformers generates in this process)")
        if self.generator_server.weights_dir is None and self.store.startswith("s3://"):
            raise ValueError("generator_server.weights_dir: needed with generator_url and an s3:// store (the "
                             "server reloads weights from a directory it can read)")
        return self

    @field_validator("device", "generator_device")
    @classmethod
    def _device_exists(cls, v: str | None) -> str | None:
        return v if v is None or v == "auto" else check_device(v)

    @model_validator(mode="after")
    def _train_processes(self) -> RLConfig:
        check_world_size(self.train_world_size, self.device, self.train_backend)
        return self

    @model_validator(mode="after")
    def _combinations(self) -> RLConfig:
        rows = self.prompts_per_step * self.group_size
        if self.mini_batches > rows:
            raise ValueError(f"mini_batches={self.mini_batches} exceeds the batch ({rows} rows = prompts_per_step x group_size)")
        if self.micro_batch_size is not None and self.micro_batch_size > rows:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} is larger than the batch ({rows} rows)")
        names = [t.name for t in self.environments]
        if len(set(names)) != len(names):
            raise ValueError(f"environments: names must be unique, got {names}")
        _check_eval_sets(self.environments, training=True)
        if self.prompts_per_step < len(self.environments):
            raise ValueError(f"prompts_per_step={self.prompts_per_step} is smaller than the number of environments")
        if self.algorithm == "dpo" and (self.ppo_epochs > 1 or self.filter.tau is not None):
            raise ValueError("algorithm=dpo takes neither ppo_epochs > 1 nor filter.tau (pairs are not filtered)")
        _check_staleness(self)
        _check_runner(self)
        if self.generation_batch_prompts is not None and self.generation_batch_prompts > self.prompts_per_step:
            raise ValueError(f"generation_batch_prompts={self.generation_batch_prompts} exceeds prompts_per_step={self.prompts_per_step}")
        return self

    def store_location(self) -> StoreLocation:
        return open_location(self.store, self.s3)

    @property
    def run_label(self) -> str:
        return f"{self.algorithm} s={self.sync_every}"


def _check_runner(cfg: RLConfig) -> None:
    if cfg.runner == "ray" and cfg.generator_url is not None:
        raise ValueError(f"generator_url={cfg.generator_url} with runner=ray: generation goes either to that vLLM "
                         "server or to the run's Ray actor; drop one of them")
    if cfg.runner == "ray" and cfg.engine == "vllm":
        raise ValueError("engine=vllm with runner=ray: the Ray generator actor runs the transformers engine; use "
                         "engine=transformers (or auto) with runner=ray, or runner=local for vLLM")
    if cfg.runner == "local" and cfg.ray_address is not None:
        raise ValueError(f"ray_address={cfg.ray_address!r} is set but runner=local: set runner=ray to use the cluster")


def _check_staleness(cfg: RLConfig) -> None:
    """``max_staleness`` where it means something: refused, with the reason, where it would do nothing."""
    k = cfg.max_staleness
    if not k:
        return
    if cfg.algorithm == "dpo" and cfg.sync_every == "offline":
        raise ValueError(f"max_staleness={k} does nothing for offline DPO (algorithm=dpo, sync_every='offline'): its "
                         "generator never changes, so no rollout is ever stale; use max_staleness=0")
    if k > cfg.checkpoint_every:
        raise ValueError(f"max_staleness={k} exceeds checkpoint_every={cfg.checkpoint_every}: a resumed run rebuilds "
                         "the generator version k steps back from a kept full checkpoint; lower max_staleness or "
                         "raise checkpoint_every")


def _check_eval_sets(environments: list[EnvironmentSpec], training: bool) -> None:
    """Eval set names are unique over the environments (they name metric columns); a trained dataset
    environment needs its training source (an eval-only one is for `rlcadence eval`)."""
    if training:
        missing = [e.name for e in environments if e.kind == "dataset" and e.source is None]
        if missing:
            raise ValueError(f"environments {missing}: kind=dataset needs a source to train on")
    names = [s.name for e in environments for s in e.eval_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"environments.eval_sets: names must be unique over all environments, got {names}")


def is_due(step_done: int, every: Cadence) -> bool:
    """After ``step_done`` optimizer steps, is a sync due? (paper A: sync when step % s == 0)."""
    return every != "offline" and step_done % every == 0


def eval_due(cfg: RLConfig, step_done: int) -> bool:
    """Is the held-out evaluation run after ``step_done`` optimizer steps? (every ``eval_every``, and the last)."""
    return step_done % cfg.eval_every == 0 or step_done == cfg.steps


def checkpoint_due(cfg: RLConfig, step_done: int) -> bool:
    """Is a full checkpoint written after ``step_done`` optimizer steps? (every ``checkpoint_every``, and the last)."""
    return step_done % cfg.checkpoint_every == 0 or step_done == cfg.steps
