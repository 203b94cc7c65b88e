"""The RL loop's stages, one module each: a thin Prefect task over plain functions.

Each stage receives the run's :class:`~rlcadence.run_state.RunState` and a step, reads its inputs from
the store and writes its outputs there, returning URIs or small metric dicts, so any stage can run in a
fresh process (resume after a crash, another worker). ``stage.fn(run, step)`` calls the work without
Prefect (tests, benches).
"""
