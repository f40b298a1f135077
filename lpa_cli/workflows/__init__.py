"""What each analysis command does, as a library call: the torch side's models and traces handed to the
torch-free `analyzers` (audit, compare, monotonicity, probe, info, reproduce)."""
