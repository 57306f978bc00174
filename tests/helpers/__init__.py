"""What the tests share beside their fixtures (which live in conftest.py): composed configs, the recipe of the
shared two-worker run, Keras callbacks that Ray workers import (this folder's parent is on their PYTHONPATH), a
real S3 server and an outage proxy in front of it, a real MLflow server, image data sets, and Ray clusters in network
namespaces."""
