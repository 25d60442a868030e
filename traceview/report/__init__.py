"""Reports: terminal (rich), JSON, CSV tables, HTML (plotly), gate verdicts."""
