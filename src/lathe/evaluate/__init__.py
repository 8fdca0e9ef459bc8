"""Evaluation of a trained model: multiple-choice benchmarks (choice.py) and perplexity on a dataset (perplexity.py)."""
