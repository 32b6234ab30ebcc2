"""A model's predictions: the input of one radiograph, batched forward passes, TTA, calibration and heat maps."""
