"""tfds dataset builders of the project (``datasets/<name>/``, the `tfds new` layout)."""
