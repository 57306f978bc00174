"""Framework backends: how a resolved job becomes a Ray trainer and what runs on each worker.

Each backend module offers `make_trainer(job, context, run, resources_per_worker, callbacks)`. Only TensorFlow for
now.
"""
