"""TensorBoard scalar summaries, written with TensorFlow's core summary
writer (TensorFlow must be installed, the `tensorboard` package need not
be; any Keras backend may train)."""


class ScalarWriter:
    """Writes named scalars at a step into a TensorBoard log directory.

    Args:
        log_dir: the event files' directory (created if missing).
    """

    def __init__(self, log_dir):
        try:
            import tensorflow as tf
        except ImportError as error:
            raise ImportError(
                "Writing TensorBoard summaries needs TensorFlow (`pip install "
                f"tensorflow`). Received: log_dir={log_dir!r}") from error
        from tensorflow.core.framework import summary_pb2

        # What TensorBoard's scalar plugin reads: a float32 scalar tensor
        # whose metadata names the plugin.
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
        self._metadata = metadata.SerializeToString()
        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(log_dir))

    def write(self, scalars, step):
        """Writes `{name: float}` at integer `step`."""
        with self._writer.as_default(step=int(step)):
            for name, value in scalars.items():
                self._tf.summary.write(
                    name, self._tf.constant(float(value), self._tf.float32),
                    metadata=self._metadata)

    def close(self):
        self._writer.flush()
        self._writer.close()
