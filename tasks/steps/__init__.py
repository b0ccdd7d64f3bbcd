"""The steps a flow runs against the store (register, extract, concepts, analyse), as plain
functions, and their thin Prefect task wrappers."""
