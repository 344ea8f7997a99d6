"""Deployment checks: Triton Inference Server model repositories.

`triton_export` writes a model's folder (config.pbtxt, the version folder, and for a TensorRT plan
the profile, the build commands and a sidecar describing the engine); `triton_check` checks a
repository's configurations against its model files. Both use the model configuration protobuf
that `tritonclient` ships, so a config is read and written by Triton's own schema.
"""
