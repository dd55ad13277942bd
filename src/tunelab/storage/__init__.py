"""What every tunelab store shares: opening the SQLite file and upgrading the schemas in it (`sqlite.py`)."""
