"""File formats read and written by the project (safe readers for untrusted files from outside)."""
