"""Clustering directions: HDBSCAN in two spaces, their geometry and metrics, the step on a store."""
