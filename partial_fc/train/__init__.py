"""The trainer: loop, checkpoints, logging, periodic verification."""
