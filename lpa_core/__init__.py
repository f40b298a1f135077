"""lpa's kernel: what both sides share and nothing else (errors and exit codes, safe file writing,
depth parsing, TOML reading). Torch-free and imports nothing of lpa's: `analyzers` and `lpa_cli` both
stand on it (docs/design.md)."""
