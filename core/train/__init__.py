"""The training loop shared by every stage: epochs, losses, schedules, weight averaging, evaluation, cached features."""
