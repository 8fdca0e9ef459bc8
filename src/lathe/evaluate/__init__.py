"""Evaluation: generation metrics (BLEU/ROUGE), prediction files, token accuracy."""
