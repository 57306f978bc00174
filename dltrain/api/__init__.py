"""dltrain's Python API (README.md, "Python API"), which the `dltrain` package offers by name (dltrain.train, ...):
what the `dltrain` command does, from Python or a notebook.

- training.py: `train(overrides, storage=...)` trains as `python -m dltrain` does and returns the run's RunHandle;
- runs.py: `open_run(reference)` and `list_runs()`; a RunHandle's status, config, summary, metrics (a pandas
  DataFrame), plots and Keras model, and registering that model;
- models.py: `register_model`, `set_alias` and `load_model` (NAME@alias), whose LoadedModel predicts on NumPy
  arrays or image files;
- store.py: the run store every function takes, `storage=` (a folder or s3://bucket/prefix; None:
  $DLTRAIN_STORAGE, else ~/dltrain_results), with `endpoint_url` and `region` for S3.

Every function raises DltrainError in one line, with the `dltrain` command's messages, and never exits the process.
"""
