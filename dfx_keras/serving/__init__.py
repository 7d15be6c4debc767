"""Serving: the SavedModel for TensorFlow Serving (image-header checks, signatures, versioned export)."""
