"""The queueing orchestrator: one FIFO queue in front of a fleet of model containers."""
