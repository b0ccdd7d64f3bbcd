"""Prefect flows and the command line: wiring only, no maths."""

import os

# The folder sits at the top of the repository (the design card), but it is only ever imported as
# refusal_atlas.flows: a bare "flows" is a common name (PyPI has distributions called so, and Prefect
# keeps results in ~/.prefect/storage), so importing it under that name would silently pick up,
# or shadow, something else.
if __name__ != "refusal_atlas.flows":
    raise ImportError(
        f"refusal-atlas's flows package was imported as {__name__!r}; import it as 'refusal_atlas.flows' "
        "after 'pip install -e .' (or 'make install')."
    )

# A flow run without a server starts Prefect's temporary one, which otherwise sends telemetry:
# without network that fails and fills the log with tracebacks (and its heartbeat has logged
# "database is locked"). Set here rather than in the command line, so that a notebook or a
# benchmark that calls the flows directly gets the same quiet server. A user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
