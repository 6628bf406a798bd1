"""``python -m caffe2tf`` is the same as the ``caffe2tf`` console script."""

from caffe2tf.cli import main

if __name__ == "__main__":
    main()
