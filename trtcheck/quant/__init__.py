"""INT8 and FP8 through explicit Q/DQ: quantize, calibrate, compare layer by layer, fix.

TensorRT 11 builds quantized networks only from explicit QuantizeLinear/DequantizeLinear pairs;
ONNX Runtime runs the same Q/DQ models on CPU with real int8 (and float8) kernels, so everything
here is checked without a GPU.
"""
