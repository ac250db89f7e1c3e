"""`flowrun serve`: the run service (engine.service) over HTTP."""
