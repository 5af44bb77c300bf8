from .calibration import calibration_segments, corpus_windows, evaluation_windows, tensor_sha256, tokenize_stream
from .corpora import CORPORA, LOCAL_CORPORA, Corpus, data_dir, ensure_corpus, load_corpus
from .hub import DataUnavailableError

__all__ = ["calibration_segments", "corpus_windows", "evaluation_windows", "tensor_sha256", "tokenize_stream",
           "CORPORA", "LOCAL_CORPORA", "Corpus", "data_dir", "ensure_corpus", "load_corpus", "DataUnavailableError"]
