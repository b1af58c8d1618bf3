"""Text front end: enwik8 bytes, PG-19 subwords, generic text files."""
