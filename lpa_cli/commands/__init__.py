"""One module per command. Each parses its options, calls a library function and renders the result."""
