"""The direction engine: f(h) and its gradient on a reused prefix cache, Option 1 and 2 directions."""
