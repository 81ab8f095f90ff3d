"""Streaming 4D NIfTI through sharded TFRecords and tf.data."""
