"""Training engine: the loop, checkpoints, logging, distributed set-up."""
