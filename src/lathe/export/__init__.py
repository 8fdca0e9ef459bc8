"""`lathe export`: merge adapters into the base model and write a model anyone can load."""
