from .calibration import calibration_segments, evaluation_windows, tensor_sha256, tokenize_stream
from .corpora import LOCAL_CORPORA, Corpus, data_dir, load_corpus

__all__ = ["calibration_segments", "evaluation_windows", "tensor_sha256", "tokenize_stream", "LOCAL_CORPORA",
           "Corpus", "data_dir", "load_corpus"]
