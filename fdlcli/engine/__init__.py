"""The shared plumbing every experiment reuses: devices, seeding, checkpoints, tracking, the loop."""
