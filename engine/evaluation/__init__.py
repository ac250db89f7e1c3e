"""`flowrun eval`: a flow's answers scored on a data file of cases (dataset), run and scored (runner, scoring),
summed up with a confidence interval (stats) and shown (report)."""
