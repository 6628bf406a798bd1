"""The application layer: one module per command, each driving the pipeline once.

``caffe/`` reads the prototxt, ``rule/`` lowers it to an ``UpdateRule``, ``targets/`` plan and
render, ``verify/`` runs reference against candidate. The commands here read the files, call
each stage once, pass the parsed recipe / lowered rule down (never a path to parse again) and
return a :class:`~caffe2tf.app.report.Report`, whose ``exit_code`` the CLI returns.
"""
