"""The work of refusal-atlas, as plain functions in one folder per concern.

prompts/     prompt records, readers and sources, and the shipped prompt sets (data/)
model/       loading a model, its chat template, residual-stream hooks, generation
engine/      f(h), its gradient on a reused prefix cache, Option 1 and Option 2 directions
clustering/  HDBSCAN over the directions, geometry, metrics, the clustering step on a store
evaluation/  induce, bypass, specificity and side effects of directions; the judges
report/      the HTML and markdown report, its tables and plots
organism/    the model organism: data, probe gate, fine-tuning, measurement, model card, Prefect tasks
steps/       the steps a flow runs against the store, and their thin Prefect task wrappers
settings.py  the one typed settings model of a run
"""

# The folder sits at the top of the repository (the design card), but it is only ever imported as
# refusal_atlas.tasks: a bare "tasks" is a common name (PyPI has distributions called so, and Prefect
# keeps results in ~/.prefect/storage), so importing it under that name would silently pick up,
# or shadow, something else.
if __name__ != "refusal_atlas.tasks":
    raise ImportError(
        f"refusal-atlas's tasks package was imported as {__name__!r}; import it as 'refusal_atlas.tasks' "
        "after 'pip install -e .' (or 'make install')."
    )
