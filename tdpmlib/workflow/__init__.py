"""The running machinery: profiles and config, data and sources, results and provenance, the notebook glue,
memory and FLOP budgets, the training CLIs and the sweep runner."""
