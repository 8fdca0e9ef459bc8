"""Efficiency you can see: the memory planner (and, later, the method benchmark)."""
