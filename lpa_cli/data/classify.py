"""Text classification from a CSV or JSONL file with a text and a label column.

Options: ``text_column`` (``text``), ``label_column`` (``label``), ``tokenizer`` (``bytes``, or a
tokenizer.json / model directory; ``lpa train --init DIR`` sets the model's own), ``context``
(128: the most tokens a text may have; each batch is padded only to its longest text, with a
mask; ``dynamic_padding = false`` pads every batch to the context, for comparisons), ``truncate`` (false: a longer text is an error naming
its row; true: cut it), ``test`` (a second file for the test split; default a seeded split holding
out ``test_fraction``, 0.2). Labels are the sorted distinct training labels; a test label never seen
in training is an error. Texts are encoded with the tokenizer's own special tokens (BERT's
``[CLS] ... [SEP]``, Llama's BOS).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from lpa_core.errors import DataError
from lpa_core.files import readable
from lpa_cli.config import TaskConfig
from lpa_cli.data.base import Task, check_options, float_option, int_option
from lpa_cli.data.images import seeded_split
from lpa_cli.data.splits import TensorSplit
from lpa_cli.formats.tokenizer import Tokenizer, load_tokenizer

OPTIONS = ("text_column", "label_column", "tokenizer", "context", "truncate", "test", "test_fraction", "dynamic_padding")


def read_rows(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Texts and labels (as strings) of a .csv (header row) or .jsonl (one object per line) file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    texts, labels = [], []
    try:
        with readable(path, "text", error=DataError).open(newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".jsonl":
                rows = (json.loads(line) for line in f if line.strip())
                for i, row in enumerate(rows, start=1):
                    if not isinstance(row, dict) or text_column not in row or label_column not in row:
                        raise DataError(f"{path}: line {i} lacks {text_column!r} or {label_column!r}")
                    texts.append(str(row[text_column]))
                    labels.append(str(row[label_column]))
            else:
                reader = csv.DictReader(f)
                missing = [c for c in (text_column, label_column) if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (has {', '.join(reader.fieldnames or []) or 'none'}; "
                                    "set task.options.text_column / label_column)")
                for row in reader:
                    if row[text_column] is None or row[label_column] is None:
                        raise DataError(f"{path}: row {reader.line_num} has too few columns")
                    texts.append(row[text_column])
                    labels.append(row[label_column].strip())
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON Lines ({err})") from None
    except csv.Error as err:
        raise DataError(f"{path}: not valid CSV ({err})") from None
    if not texts:
        raise DataError(f"{path}: no rows")
    return texts, labels


def encode(texts: list[str], tokenizer: Tokenizer, context: int, truncate: bool, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (n, context): right-padded with the pad id (0), mask 1 at real tokens."""
    encoded = tokenizer.encode_batch(texts, special=True)
    ids = torch.zeros(len(texts), context, dtype=torch.int64)
    mask = torch.zeros(len(texts), context, dtype=torch.int64)
    for i, row in enumerate(encoded):
        if len(row) > context:
            if not truncate:
                raise DataError(f"{where}: row {i + 1} has {len(row)} tokens, more than the context of {context} "
                                "(raise task.options.context or set task.options.truncate=true)")
            row = row[:context]
        if not row:
            raise DataError(f"{where}: row {i + 1} is empty")
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def load_classification_task(source: str, cfg: TaskConfig) -> Task:
    check_options("classify", cfg.options, OPTIONS)
    opts: dict[str, Any] = cfg.options
    path = Path(source)
    text_column, label_column = str(opts.get("text_column", "text")), str(opts.get("label_column", "label"))
    context = int_option(opts, "context", 128, 2, 1 << 16)
    truncate = bool(opts.get("truncate", False))
    dynamic = bool(opts.get("dynamic_padding", True))  # false: every batch padded to the full context (for comparisons)
    tokenizer = load_tokenizer(str(opts.get("tokenizer", "bytes")))
    texts, labels = read_rows(path, text_column, label_column)
    if opts.get("test"):
        test_path = Path(str(opts["test"]))
        test_texts, test_labels = read_rows(test_path, text_column, label_column)
        train_texts, train_labels = texts, labels
    else:
        test_path = path
        n = len(texts)
        n_test = cfg.n_test or max(1, round(n * float_option(opts, "test_fraction", 0.2, 0.0, 1.0)))
        if not 0 < n_test < n:
            raise DataError(f"{path}: {n} rows cannot be split into train and test")
        tr, te = seeded_split(n, n_test, cfg.data_seed)
        train_texts, train_labels = [texts[i] for i in tr], [labels[i] for i in tr]
        test_texts, test_labels = [texts[i] for i in te], [labels[i] for i in te]
    classes = sorted(set(train_labels), key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip("-").isdigit() else 0, v))
    if len(classes) < 2:
        raise DataError(f"{path}: needs at least two labels in the training rows (found {', '.join(classes)})")
    unknown = sorted(set(test_labels) - set(classes))
    if unknown:
        raise DataError(f"{test_path}: test labels {', '.join(map(repr, unknown[:5]))} never occur in the training rows")
    index = {c: i for i, c in enumerate(classes)}
    if cfg.n_train:
        train_texts, train_labels = train_texts[: cfg.n_train], train_labels[: cfg.n_train]
    x_train, m_train = encode(train_texts, tokenizer, context, truncate, str(path))
    x_test, m_test = encode(test_texts, tokenizer, context, truncate, str(test_path))
    y_train = torch.tensor([index[v] for v in train_labels])
    y_test = torch.tensor([index[v] for v in test_labels])
    return Task(
        name=f"classify:{path}", kind="classification", input_kind="tokens",
        train=TensorSplit(x_train, y_train, m_train, dynamic), test=TensorSplit(x_test, y_test, m_test, dynamic), out_dim=len(classes),
        in_shape=(context,), description=f"text classification {path.name}: {len(texts)} rows, {len(classes)} classes ({tokenizer.name})",
        meta={"classes": classes, "context": context, "tokenizer": tokenizer.name, "source": str(path)},
        tokenizer=tokenizer,
    )
