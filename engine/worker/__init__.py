"""Workers: runs queued in PostgreSQL, taken by `flowrun worker` processes on any number of machines."""
