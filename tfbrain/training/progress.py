"""Progress lines that count the whole run, not the one `fit` call of each epoch."""

import keras


class RunProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar with "Epoch e/E" counting all `total_epochs` of the run (the
    trainer calls `fit` once per epoch, so Keras alone would print "Epoch 2/2" in a
    3-epoch run)."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs
