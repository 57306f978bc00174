"""The distributed train/eval loop: TensorFlow + Keras, no Ray or Hydra."""
