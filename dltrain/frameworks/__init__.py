"""Framework backends: how a resolved job becomes a Ray trainer and what runs on each worker.

Each backend module offers `make_trainer(job, run, resources_per_worker, callbacks, console)`. Only TensorFlow for now.
"""
