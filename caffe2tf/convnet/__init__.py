"""cuda-convnet and cuda-convnet2 layer files (``layers.cfg`` + ``layer-params.cfg``): read
faithfully, no meaning (docs/cuda-convnet.md). :mod:`caffe2tf.rule.lower_convnet` lowers them."""
