"""Why a run that has started cannot go on."""


class TrainingStopped(RuntimeError):
    """Training cannot go on: a non-finite loss or parameter, or a checkpoint that could
    not be written. (Bad settings or an unusable output folder, found before training
    starts, raise ValueError or OSError instead.)"""
