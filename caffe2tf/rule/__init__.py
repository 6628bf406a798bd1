"""Caffe's update rule as data (``model.py``), its lowering from a Recipe (``lower.py``), the lr
policies (``schedules.py``) and a NumPy reference executor (``reference.py``)."""
