"""Serving a run's model: the model and its preprocessing (pure Keras, Pillow, NumPy), and the HTTP app on Ray
Serve that `dltrain serve` runs."""
