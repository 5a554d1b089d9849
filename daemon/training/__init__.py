"""Training: schedule and drift triggers, the training cycle in a child process, promotion."""
