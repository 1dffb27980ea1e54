"""Training, in parts with one job each; ``captioning.trainer.CaptioningTrainer`` puts
them together. Imports point down this list:

    loop          epochs, each epoch's minibatches, progress bar and loss lines, Ctrl-C
    step          one update: loss and gradients -> reduce_gradients -> clip -> update,
                  recorded as a CUDA graph where the backend can
    self_critical the self-critical step: K samples per image, CIDEr-D rewards, a
                  baseline, the policy gradient as the weighted softmax loss
    data_parallel MPI ranks: each step's share, one flat Allreduce, broadcast at start
    validation    the validation loss on a fixed subset, early stopping
    run_folder    checkpoints, best model, log, settings, and the checks before writing
    schedule      when to checkpoint ('500' iterations, '2e' epochs)
    losses        per-iteration losses kept on the device until needed, checked on the host
    errors        TrainingStopped

This file imports none of them.
"""
