"""A Triton model repository from the toolkit's artifacts (``python -m triton_repo.build``).

``models/`` holds the python-backend model code (copied as ``model.py`` into the repository);
``build`` writes the repository, ``configs`` the ``model_config_pb2.ModelConfig`` messages and
``artifacts`` finds and checks the ONNX files, sidecars, engines and tokenizers it serves.
Nothing is imported here, so ``triton_repo/`` can be copied into a repository without its
builder's dependencies.
"""
