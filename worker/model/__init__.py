"""The model: local files loaded, quantized, adapted for its fine-tuning method, its attention and loss kernels."""
