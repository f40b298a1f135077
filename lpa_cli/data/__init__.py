"""Data: tasks (built-in and the user's files), splits and batches. Knows nothing of models or training."""
