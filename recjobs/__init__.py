"""recjobs: nightly batch recommendations into a SQL table.

The library does all the work; Airflow DAGs in ``dags/`` only wire its functions
together. Nothing in this package imports Airflow.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow Recommenders needs Keras 2; the switch only works before TensorFlow's
# first import, so set it as soon as anything of ours is imported.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# 3: no C++ info/warning/error lines (see recjobs.models.tfrs.import_tensorflow).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
