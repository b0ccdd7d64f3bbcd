"""Evaluating directions: induce, bypass, specificity and side effects, and the reply judges."""
