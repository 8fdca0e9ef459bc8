"""Per-stage tokenization: turn canonical samples into model inputs and labels."""
