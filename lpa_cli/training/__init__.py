"""Training: objectives and the head loss, the trainer (set-up, loop, finish), snapshots,
distributed wrapping, trackers and fine-tuning defaults."""
