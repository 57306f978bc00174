"""Model builders: pure Keras functions (input_shape, num_classes, **hyperparameters) -> keras.Model."""
