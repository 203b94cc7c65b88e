"""What the Prefect UI shows of a run besides its task runs: the flow run's name and tags.

Names come from the run (``grpo s=10 · <run_id>``, ``resume · <run_id>``), tags from its config
(``algorithm:dpo``, ``cadence:semi-online``, ``engine:hf``), so the UI's filters find "all semi-online DPO runs".
"""

from __future__ import annotations

from prefect import get_client, get_run_logger, runtime

from rlcadence.config import RLConfig
from rlcadence.tasks.run import stable_run_id


def cadence(sync_every: int | str) -> str:
    """Paper A's names: s=1 online, s>1 semi-online, never synced offline."""
    if sync_every == "offline":
        return "offline"
    return "online" if sync_every == 1 else "semi-online"


def engine_name(config: RLConfig) -> str:
    """The generation engine's short name as it will run (``auto`` resolved): ``hf`` (transformers), ``vllm``
    or ``vllm-server`` (generator_url)."""
    from rlcadence.devices import resolve_device
    from rlcadence.engines.settings import resolve_engine

    kind = resolve_engine(config.engine, resolve_device(config.generator_device or config.device).type,
                          config.generator_url)
    return "hf" if kind == "transformers" else kind


def run_tags(config: RLConfig) -> list[str]:
    return [f"algorithm:{config.algorithm}", f"cadence:{cadence(config.sync_every)}",
            f"sync:{config.sync_every}", f"engine:{engine_name(config)}"]


def run_name(config: RLConfig, run_id: str, resumed: bool) -> str:
    return f"resume · {run_id}" if resumed else f"{config.run_label} · {run_id}"


def config_parameter() -> RLConfig:
    raw = runtime.flow_run.parameters.get("config", RLConfig())
    return raw if isinstance(raw, RLConfig) else RLConfig.model_validate(raw)


def flow_run_name() -> str:
    """``@flow(flow_run_name=...)``: evaluated by Prefect before the body, a retry (run_count > 1) is a resume."""
    config = config_parameter()
    return run_name(config, stable_run_id(config), resumed=runtime.flow_run.run_count > 1)


def label_flow_run(config: RLConfig, run_id: str, resumed: bool) -> None:
    """Name the current flow run after the run and add the run's tags (kept: tags it already has)."""
    flow_run_id = runtime.flow_run.id
    if not flow_run_id:
        return
    tags = sorted(set(runtime.flow_run.tags or []) | set(run_tags(config)))
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, name=run_name(config, run_id, resumed), tags=tags)
    except Exception as err:  # noqa: BLE001 - a label is a view; the run goes on without it
        get_run_logger().warning(f"flow run not renamed: {err}")
