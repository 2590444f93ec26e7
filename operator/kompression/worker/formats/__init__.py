"""Reading and writing the model formats spec.model.format names, every file vetted as untrusted."""
