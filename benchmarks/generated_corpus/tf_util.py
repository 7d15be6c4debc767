"""What every family's training code shares about running TensorFlow."""

import tensorflow as tf


def maybe_graph(fn, graph: bool):
    """``fn`` as a tf.function, or eager: tracing costs more than a test build's few steps."""
    return tf.function(fn) if graph else fn
