"""A sweep's settings in Ray Tune's terms: the search space of its expressions, its scheduler and its search
algorithm."""

import math
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search import BasicVariantGenerator

from dltrain import search_space
from dltrain.job import AshaConfig, MedianConfig, SweepConfig
from dltrain.search_space import Dimension

TIME_ATTRIBUTE = "epoch"  # schedulers count a trial's progress in its run's epochs, which survive restarts of the trial


def dimensions(sweep: SweepConfig) -> dict[str, Dimension]:
    """The searched keys, dotted, and their parsed expressions."""
    return {path: search_space.parse(expression) for path, expression in search_space.flatten(sweep.space).items()}


def _domain(dimension: Dimension, grid: bool) -> Any:
    if grid:
        return tune.grid_search(dimension.candidates())
    sampler = {
        "uniform": tune.uniform,
        "quniform": tune.quniform,
        "loguniform": tune.loguniform,
        "randint": tune.randint,
        "choice": tune.choice,
    }[dimension.distribution]
    return sampler(*dimension.arguments)


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Ray Tune's search space for the sweep, keyed by dotted config key."""
    grid = sweep.search.algorithm == "grid"
    return {path: _domain(dimension, grid) for path, dimension in dimensions(sweep).items()}


def trial_count(sweep: SweepConfig) -> int:
    """How many trials the sweep runs: num_samples, or num_samples times the grid's combinations."""
    if sweep.search.algorithm != "grid":
        return sweep.num_samples
    return sweep.num_samples * math.prod(len(d.candidates()) for d in dimensions(sweep).values())


class _SparesLastEpoch:
    """A scheduler that never stops a trial on its last epoch: the trial's test evaluation and final model come
    after that epoch's report, and a stop then would lose them."""

    def __init__(self, last_epoch: int, **settings: Any):
        super().__init__(**settings)
        self.last_epoch = last_epoch

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if result.get(TIME_ATTRIBUTE, 0) >= self.last_epoch else decision


class _ASHA(_SparesLastEpoch, ASHAScheduler):
    pass


class _Median(_SparesLastEpoch, MedianStoppingRule):
    pass


def scheduler(sweep: SweepConfig, epochs: int) -> Any:
    """Tune's trial scheduler for sweep.scheduler, over trials of `epochs` epochs."""
    settings = sweep.scheduler
    if isinstance(settings, AshaConfig):
        return _ASHA(
            epochs,
            time_attr=TIME_ATTRIBUTE,
            max_t=epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    if isinstance(settings, MedianConfig):
        return _Median(
            epochs,
            time_attr=TIME_ATTRIBUTE,
            grace_period=settings.grace_period,
            min_samples_required=settings.min_samples_required,
        )
    return FIFOScheduler()


def search_algorithm(sweep: SweepConfig, at_once: int) -> Any:
    """Random or grid sampling, or Optuna's TPE (which Tune limits to `at_once` trials through TuneConfig)."""
    seed = sweep.search.seed
    if sweep.search.algorithm == "bayes":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
    return BasicVariantGenerator(max_concurrent=at_once, random_state=seed)
