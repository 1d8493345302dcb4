"""What every recipe runs on: batch streams, LR schedules, loss weighting, evaluation, checkpoints
and RNG state, logs, collectives, and the :class:`~metasparsity.training.session.RunSession`
that owns a run's lifecycle."""
