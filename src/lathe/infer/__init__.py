"""Inference: generate answers with the same template the model was trained with."""
