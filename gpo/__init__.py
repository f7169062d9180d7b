"""GPO, the gradient-inspired prompt optimizer, and its baselines, composed on the engine.

The public names are re-exported here (see `__all__` and docs/python-api.md). A method is a
named configuration (`METHODS`: gpo, ape, apo, opro, pe2, sgdm, empty, cot); `run_optimization`
runs it on tasks with engines the caller opened, and returns the summary `gpo optimize` prints:

    from engine import Engine, OpenAICompatibleBackend
    from gpo import RunSpec, config_for_method, run_optimization


    async def optimize(base_url: str, model: str, task: str = "bbh/navigate") -> dict:
        \"\"\"A few GPO steps on one task, one server as scorer and optimizer.\"\"\"
        config = config_for_method("gpo", steps=3, candidates=4, dev_size=32, test_size=32)
        spec = RunSpec(tasks=(task,), optimizer=config)
        scorer = Engine(OpenAICompatibleBackend(base_url, model))
        optimizer = Engine(OpenAICompatibleBackend(base_url, model))
        try:
            return await run_optimization(spec, scorer=scorer, optimizer=optimizer, run_dir=None)
        finally:
            await scorer.close()
            await optimizer.close()

`summary["tasks"][0]` holds the initial and final prompt with their dev and test scores. Pass a
`RunDirectory` (and the engines a `ResponseCache` in it) to keep the run resumable.
"""

from gpo.config import COT_PROMPT, OptimizerConfig
from gpo.embedders import EmbedderConfig, make_embedder
from gpo.eval_job import EvalJob, run_eval_job
from gpo.interfaces import ProgressListener, SilentProgress
from gpo.methods import METHOD_PRESETS, METHODS, config_for_method
from gpo.optimizer import PromptOptimizer
from gpo.results import TaskResult
from gpo.run_dir import RunDirectory
from gpo.runner import RunSpec, run_optimization
from gpo.schedules import WordBudgetSchedule
from gpo.trajectory import TrajectoryEntry

__all__ = [
    "COT_PROMPT",
    "METHODS",
    "METHOD_PRESETS",
    "EmbedderConfig",
    "EvalJob",
    "OptimizerConfig",
    "ProgressListener",
    "PromptOptimizer",
    "RunDirectory",
    "RunSpec",
    "SilentProgress",
    "TaskResult",
    "TrajectoryEntry",
    "WordBudgetSchedule",
    "config_for_method",
    "make_embedder",
    "run_eval_job",
    "run_optimization",
]
