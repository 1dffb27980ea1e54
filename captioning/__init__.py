"""Image captioning on pluggable NumPy / Numba / CuPy kernels.

``from captioning import *`` gives a notebook of the textbook exercise every name it
uses: the layer functions, CaptioningRNN, the trainer (also as CaptioningSolver), the
update rules, the gradient-check helpers, the COCO data functions and image_from_url.
"""

from backend import available_backends, get_backend
from captioning.data.default import load_coco_data
from captioning.data.images import image_from_url
from captioning.data.reader import sample_coco_minibatch
from captioning.data.vocab import decode_captions
from captioning.gradient_check import (
    eval_numerical_gradient,
    eval_numerical_gradient_array,
    rel_error,
)
from captioning.layers import (
    affine_backward,
    affine_forward,
    lstm_backward,
    lstm_forward,
    lstm_step_backward,
    lstm_step_forward,
    rnn_backward,
    rnn_forward,
    rnn_step_backward,
    rnn_step_forward,
    sigmoid,
    temporal_affine_backward,
    temporal_affine_forward,
    temporal_softmax_loss,
    word_embedding_backward,
    word_embedding_forward,
)
from captioning.model import CaptioningRNN
from captioning.optim import adam, rmsprop, sgd, sgd_momentum
from captioning.trainer import CaptioningSolver, CaptioningTrainer

__all__ = [
    "CaptioningRNN", "CaptioningSolver", "CaptioningTrainer", "adam", "affine_backward",
    "affine_forward", "available_backends", "decode_captions", "eval_numerical_gradient",
    "eval_numerical_gradient_array", "get_backend", "image_from_url", "load_coco_data",
    "lstm_backward", "lstm_forward", "lstm_step_backward", "lstm_step_forward", "rel_error",
    "rmsprop", "rnn_backward", "rnn_forward", "rnn_step_backward", "rnn_step_forward",
    "sample_coco_minibatch", "sgd", "sgd_momentum", "sigmoid", "temporal_affine_backward",
    "temporal_affine_forward", "temporal_softmax_loss", "word_embedding_backward",
    "word_embedding_forward",
]
