"""The built-in sample data, made offline: fetched from the package registries, converted, cut into tasks.

Nothing here runs during training; training reads the datalists this writes (``sample_data.sample_dir``).
"""
