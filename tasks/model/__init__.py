"""The model: loading it once per process, its chat template, residual-stream hooks, generation."""
