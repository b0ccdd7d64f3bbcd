"""The model organism: planted refusals on a base model, its data, training, measures and card."""
