"""Python-backend model code. Each ``<model>.py`` is copied as ``model.py`` into the
repository; its logic is plain functions and classes on numpy arrays (tested without a
server), and its ``TritonPythonModel`` a thin adapter over ``triton_python_backend_utils``."""
