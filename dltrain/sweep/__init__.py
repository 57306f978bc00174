"""Hyperparameter sweeps: Ray Tune runs one dltrain training run per trial over a search space from conf/sweep/.

A sweep has a folder like a run's (config.yaml, status.json, logs/) plus:

<storage>/<sweep id>/trials.parquet   one row per trial: trial and run ids, sampled values, status, epochs, metrics
                     summary.json     the best trial: its values, metric, epoch and run id; trial and epoch counts
                     tune/            Ray Tune's own state, from which `resume=<sweep id>` continues
                     plots/trials.png the metric against each searched key, and each trial's curve

Every trial is a whole run in its own folder, <storage>/<sweep id>-<trial id>/, so its model, metrics and
checkpoints are found as any run's. Following Ray Train V2's pattern, a trial is a function that builds and
fits one trainer, and Ray Train's Tune callback forwards each epoch's metrics to the scheduler.

driver.py       the sweep on the driver: Ray Tune over the trials, recorded in the sweep's folder
tune_settings.py  the sweep's settings in Ray Tune's terms: search space, scheduler, search algorithm
trial.py        one trial, a dltrain run in a Tune actor; the trial runs of a sweep and how they ended
report.py       the console's trial table, trials.parquet, summary.json, plots/trials.png and the result lines
"""
