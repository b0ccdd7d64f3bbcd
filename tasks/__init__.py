"""The work of refusal-atlas: plain functions, plus thin Prefect task entry points."""
