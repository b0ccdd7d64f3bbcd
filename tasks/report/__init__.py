"""The report: one self-contained HTML page and its markdown twin, with tables and plots."""
