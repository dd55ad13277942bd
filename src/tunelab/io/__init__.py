"""Reading the data files every package takes in (JSONL, CSV) with errors that name file and line."""
