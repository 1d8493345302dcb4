"""Tables and plots for runs, sweeps and comparisons (matplotlib imported lazily)."""
