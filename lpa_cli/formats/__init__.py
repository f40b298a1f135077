"""Files lpa writes and reads on the torch side: checkpoints and tokenizers. Read, validate, write;
they return configuration and tensors and never build a model (that is `lpa_cli.models.open`)."""
