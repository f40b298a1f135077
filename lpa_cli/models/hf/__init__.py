"""Hugging Face model directories, the one adapter that knows their config keys and weight names,
split by job: `directory` reads the files, `families` translates each supported family's config and
weight names, `load` brings a directory into lpa, `save` writes an lpa model back as one."""
