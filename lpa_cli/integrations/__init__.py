"""Integrations with the training loops users already have (each imports its library; lpa does not need it)."""
