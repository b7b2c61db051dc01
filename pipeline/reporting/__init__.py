"""The report's parts: tables, figures, HTML, statistics and run/seed bookkeeping."""
