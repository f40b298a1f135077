"""The HDF5 trace: the contract between the torch side (which writes it) and the analysis side.

Layout (format ``lpa-trace``, version 2; full description in docs/trace-format.md)::

    /predictions          (n, D, *pred_shape)   head output at each recorded depth (optional for LMs)
    /targets              (n, *target_shape)
    /errors/<name>        (n, D) float32        per-sample errors: se | ce, correct
    /errors/<name>_token  (n, D, T) float32     LMs only: per-token ce and correct
    /confidence/max_prob  (n, D[, T]) float32   classification and LMs: largest softmax probability
    /confidence/entropy   (n, D[, T]) float32   ... and the entropy of the softmax (nats)
    /trajectory/<name>    (n, D[, T])           format 2: kl_to_final, alignment, prediction (analyzers.trajectory)
    /states               (n, D, *state_shape)  optional residual stream h_k at each recorded depth
    /head                 group                 the shared head as numpy ops (analyzers.heads)

This package is the only place that touches HDF5 (`h5py`): the trace's spec (`spec`), writer
(`writer`, with its fsync thread in `sync`), reader (`reader`), and the lazy reader of users' own
``.h5`` data files (`arrays`). It never imports torch.
"""

from analyzers.trace.reader import DatasetInfo, Trace, is_trace, open_trace
from analyzers.trace.spec import FORMAT, FORMAT_VERSION, TraceSpec, partial_path
from analyzers.trace.writer import TraceWriter

__all__ = ["FORMAT", "FORMAT_VERSION", "DatasetInfo", "Trace", "TraceSpec", "TraceWriter", "is_trace", "open_trace", "partial_path"]
